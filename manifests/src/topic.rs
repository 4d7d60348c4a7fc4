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

/// The placeholders a topic template may use, each written `{name}`.
pub const TEMPLATE_PLACEHOLDERS: [&str; 3] = ["root", "room", "id"];

/// One piece of a topic template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplatePart<'a> {
    /// Text copied as it is.
    Literal(&'a str),
    /// A `{name}` placeholder (the name without braces).
    Placeholder(&'a str),
}

/// Splits a topic template into literal text and `{name}` placeholders. Refuses an unknown
/// placeholder (a typo such as `{rom}` would otherwise be published literally) and a brace
/// that opens or closes nothing.
pub fn parse_template(t: &str) -> Result<Vec<TemplatePart<'_>>, String> {
    let known = || {
        TEMPLATE_PLACEHOLDERS
            .iter()
            .map(|p| format!("{{{p}}}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut parts = Vec::new();
    let mut rest = t;
    while !rest.is_empty() {
        let Some(open) = rest.find(['{', '}']) else {
            parts.push(TemplatePart::Literal(rest));
            break;
        };
        if open > 0 {
            parts.push(TemplatePart::Literal(&rest[..open]));
        }
        if rest[open..].starts_with('}') {
            return Err(format!(
                "a topic template whose braces enclose a placeholder ({}): `}}` closes nothing in `{t}`",
                known()
            ));
        }
        let after = &rest[open + 1..];
        let Some(close) = after
            .find(['{', '}'])
            .filter(|&c| after[c..].starts_with('}'))
        else {
            return Err(format!(
                "a topic template whose braces enclose a placeholder ({}): `{{` is not closed in `{t}`",
                known()
            ));
        };
        let name = &after[..close];
        if !TEMPLATE_PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "a topic template with the placeholders {} only (found `{{{name}}}` in `{t}`)",
                known()
            ));
        }
        parts.push(TemplatePart::Placeholder(name));
        rest = &after[close + 1..];
    }
    Ok(parts)
}

/// Expands a template in one pass: a substituted value is never expanded again. A template
/// that [`parse_template`] refuses is returned as it is (validation reports it).
pub fn expand_template<'v>(t: &str, value: impl Fn(&str) -> Option<&'v str>) -> String {
    let Ok(parts) = parse_template(t) else {
        return t.to_string();
    };
    let mut out = String::with_capacity(t.len());
    for p in parts {
        match p {
            TemplatePart::Literal(s) => out.push_str(s),
            TemplatePart::Placeholder(name) => match value(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push('{');
                    out.push_str(name);
                    out.push('}');
                }
            },
        }
    }
    out
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

    #[test]
    fn templates_know_their_placeholders_and_expand_once() {
        let vars = |n: &str| match n {
            "root" => Some("{id}"),
            "room" => Some("salon"),
            "id" => Some("t-1"),
            _ => None,
        };
        assert_eq!(
            expand_template("{root}/{room}/{id}/t", vars),
            "{id}/salon/t-1/t"
        );
        let e = parse_template("{root}/{rom}/t").expect_err("typo");
        assert!(
            e.contains("`{rom}`") && e.contains("{root}, {room}, {id}"),
            "{e}"
        );
        for bad in ["{root}/{room", "{root}/room}", "{root}/{{room}}", "{}/x"] {
            assert!(parse_template(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_template("a/{id}").expect("ok"),
            [TemplatePart::Literal("a/"), TemplatePart::Placeholder("id")]
        );
    }
}
