//! MQTT topic and identity rules shared by every manifest.

/// Checks a topic name a client publishes to: non-empty, at most 256 bytes, no wildcards,
/// no NUL, no leading `$`.
pub fn check_topic_name(t: &str) -> Result<(), String> {
    check_common(t)?;
    if t.contains(['+', '#']) {
        return Err(format!(
            "a topic name without wildcards (`{t}` contains + or #)"
        ));
    }
    Ok(())
}

/// Checks a topic filter (subscriptions and ACL rules): `+` fills a whole level, `#` only
/// as the last level.
pub fn check_topic_filter(t: &str) -> Result<(), String> {
    check_common(t)?;
    let levels: Vec<&str> = t.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!("`#` only as the whole last level (in `{t}`)"));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("`+` only as a whole level (in `{t}`)"));
        }
    }
    Ok(())
}

fn check_common(t: &str) -> Result<(), String> {
    if t.is_empty() {
        return Err("a non-empty topic".into());
    }
    if t.len() > 256 {
        return Err("a topic of at most 256 bytes".into());
    }
    if t.contains('\0') || t.chars().any(char::is_control) {
        return Err("a topic without control characters".into());
    }
    if t.starts_with('$') {
        return Err(format!(
            "a topic outside the broker's `$` namespace (`{t}`)"
        ));
    }
    if t.contains(char::is_whitespace) {
        return Err(format!(
            "a topic without spaces (`{t}`): mosquitto's ACL file splits on them"
        ));
    }
    Ok(())
}

/// Checks an identity (certificate CN = MQTT username = ACL user): 1 to 64 characters from
/// `[A-Za-z0-9._-]`, so it is safe in file names, ACL lines and topic levels.
pub fn check_identity(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !id.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "an identity of 1 to 64 characters from A-Z a-z 0-9 . _ - not starting with . or - (got `{id}`)"
        ))
    }
}

/// True if `filter` (with `+`/`#`) matches topic `name`.
pub fn filter_matches(filter: &str, name: &str) -> bool {
    let mut f = filter.split('/');
    let mut n = name.split('/');
    loop {
        match (f.next(), n.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_like_mosquitto() {
        assert!(filter_matches("maison/#", "maison/salon/temperature"));
        assert!(filter_matches(
            "maison/+/temperature",
            "maison/salon/temperature"
        ));
        assert!(!filter_matches(
            "maison/+/temperature",
            "maison/salon/humidite"
        ));
        assert!(filter_matches("#", "a"));
        assert!(!filter_matches("maison/salon", "maison/salon/x"));
    }

    #[test]
    fn bad_topics_and_identities_are_refused() {
        assert!(check_topic_filter("maison/#/x").is_err());
        assert!(check_topic_filter("maison/sal+").is_err());
        assert!(check_topic_name("maison/+").is_err());
        assert!(check_topic_name("$SYS/x").is_err());
        assert!(check_identity("a b").is_err());
        assert!(check_identity("salon-1").is_ok());
    }
}
