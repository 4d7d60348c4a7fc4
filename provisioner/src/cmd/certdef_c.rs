//! C source of certificate definitions, as Microchip's tools write them: the template as a
//! `const uint8_t` array, the extra elements, and an `atcacert_def_t` with designated
//! initialisers and cryptoauthlib's enum names, ready to compile against its headers.

use std::fmt::Write;

use ca::certdef::{CertDef, CertLoc, DeviceLoc, STD_ELEMENTS, TF_BIN2HEX_LC, TF_NONE, zone};

fn zone_name(z: u8) -> &'static str {
    match z {
        zone::CONFIG => "DEVZONE_CONFIG",
        1 => "DEVZONE_OTP",
        zone::DATA => "DEVZONE_DATA",
        3 => "DEVZONE_GENKEY",
        _ => "DEVZONE_NONE",
    }
}

fn transform_name(t: u8) -> &'static str {
    match t {
        TF_NONE => "TF_NONE",
        TF_BIN2HEX_LC => "TF_BIN2HEX_LC",
        _ => "TF_NONE",
    }
}

fn sn_source_name(s: u8) -> &'static str {
    match s {
        0xA => "SNSRC_PUB_KEY_HASH",
        0x8 => "SNSRC_DEVICE_SN",
        _ => "SNSRC_STORED",
    }
}

fn device_loc(l: &DeviceLoc) -> String {
    format!(
        "{{ .zone = {}, .slot = {}, .is_genkey = {}, .offset = {}, .count = {} }}",
        zone_name(l.zone),
        l.slot,
        l.is_genkey,
        l.offset,
        l.count
    )
}

fn cert_loc(l: &CertLoc) -> String {
    format!("{{ .offset = {}, .count = {} }}", l.offset, l.count)
}

fn bytes(out: &mut String, data: &[u8]) {
    for line in data.chunks(16) {
        out.push_str("   ");
        for b in line {
            let _ = write!(out, " 0x{b:02X},");
        }
        out.push('\n');
    }
}

/// C identifiers of a definition named `name` (`g_cert_def_NAME`, ...).
fn ident(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// One definition: its template, elements and `atcacert_def_t`.
fn one(out: &mut String, name: &str, def: &CertDef, ca: Option<&str>) {
    let n = ident(name);
    let _ = writeln!(out, "const uint8_t g_template_{n}[] = {{");
    bytes(out, &def.cert_template);
    out.push_str("};\n\n");
    if !def.cert_elements.is_empty() {
        let _ = writeln!(
            out,
            "const atcacert_cert_element_t g_cert_elements_{n}[] = {{"
        );
        for e in &def.cert_elements {
            let _ = writeln!(
                out,
                "    {{\n        .id = \"{}\",\n        .device_loc = {},\n        .cert_loc = {},\n        .transforms = {{ {}, {} }}\n    }},",
                e.id,
                device_loc(&e.device_loc),
                cert_loc(&e.cert_loc),
                transform_name(e.transforms[0]),
                transform_name(e.transforms[1])
            );
        }
        out.push_str("};\n\n");
    }
    let _ = writeln!(out, "const atcacert_def_t g_cert_def_{n} = {{");
    let _ = writeln!(out, "    .type = CERTTYPE_X509,");
    let _ = writeln!(
        out,
        "    .comp_cert_dev_loc = {},",
        device_loc(&def.comp_cert_dev_loc)
    );
    let _ = writeln!(out, "    .private_key_slot = {},", def.private_key_slot);
    let _ = writeln!(out, "    .template_id = {},", def.template_id);
    let _ = writeln!(out, "    .chain_id = {},", def.chain_id);
    let _ = writeln!(out, "    .std_sig_size = {},", def.std_sig_size);
    let _ = writeln!(out, "    .sn_source = {},", sn_source_name(def.sn_source));
    let _ = writeln!(
        out,
        "    .cert_sn_dev_loc = {},",
        device_loc(&def.cert_sn_dev_loc)
    );
    let _ = writeln!(out, "    .issue_date_format = DATEFMT_RFC5280_UTC,");
    let _ = writeln!(out, "    .expire_date_format = DATEFMT_RFC5280_UTC,");
    let _ = writeln!(out, "    .tbs_cert_loc = {},", cert_loc(&def.tbs_cert_loc));
    let _ = writeln!(out, "    .expire_years = {},", def.expire_years);
    let _ = writeln!(
        out,
        "    .public_key_dev_loc = {},",
        device_loc(&def.public_key_dev_loc)
    );
    out.push_str("    .std_cert_elements = {\n");
    for (loc, what) in def.std_cert_elements.iter().zip(STD_ELEMENTS) {
        let _ = writeln!(out, "        {}, /* {what} */", cert_loc(loc));
    }
    out.push_str("    },\n");
    if def.cert_elements.is_empty() {
        out.push_str("    .cert_elements = NULL,\n    .cert_elements_count = 0,\n");
    } else {
        let _ = writeln!(
            out,
            "    .cert_elements = g_cert_elements_{n},\n    .cert_elements_count = sizeof(g_cert_elements_{n}) / sizeof(g_cert_elements_{n}[0]),"
        );
    }
    let _ = writeln!(
        out,
        "    .cert_template = g_template_{n},\n    .cert_template_size = sizeof(g_template_{n}),"
    );
    match ca {
        Some(ca) => {
            let _ = writeln!(out, "    .ca_cert_def = &g_cert_def_{}", ident(ca));
        }
        None => out.push_str("    .ca_cert_def = NULL\n"),
    }
    out.push_str("};\n\n");
}

/// The `.c` file of a device definition `name` and its signer's (`NAME_signer`).
pub fn source(name: &str, header: &str, device: &CertDef) -> String {
    let mut out = format!(
        "/* Certificate definitions of profile `{name}`: written by `provisioner emit certdef`.\n * One definition serves every device of the profile; rebuild with\n * atcacert_read_cert(&g_cert_def_{n}_signer, root_public_key, ...) and\n * atcacert_read_cert(&g_cert_def_{n}_device, signer_public_key, ...). */\n#include \"{header}\"\n\n",
        n = ident(name)
    );
    let signer = format!("{name}_signer");
    if let Some(s) = &device.ca_cert_def {
        one(&mut out, &signer, s, None);
    }
    let ca = device.ca_cert_def.as_ref().map(|_| signer.as_str());
    one(&mut out, &format!("{name}_device"), device, ca);
    out
}

/// The `.h` file declaring both definitions.
pub fn header(name: &str) -> String {
    let n = ident(name);
    let guard = format!("CERT_DEF_{}_H", n.to_ascii_uppercase());
    format!(
        "/* Written by `provisioner emit certdef`. */\n#ifndef {guard}\n#define {guard}\n\n#include \"atcacert/atcacert_def.h\"\n\nextern const atcacert_def_t g_cert_def_{n}_signer;\nextern const atcacert_def_t g_cert_def_{n}_device;\n\n#endif\n"
    )
}
