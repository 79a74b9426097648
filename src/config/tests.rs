//! The config's checks, each on a small file.

use super::destinations::parse_smtp_url;
use super::*;
use hexwatch_model::Severity;
use std::collections::HashMap;

struct MapEnv(HashMap<&'static str, &'static str>);
impl Env for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).map(|s| s.to_string())
    }
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    let env = MapEnv(HashMap::from([("TOKEN", "s3cret"), ("HOOK", "k")]));
    Config::parse(Path::new("/etc/hexwatch/config.toml"), text, &env)
}

#[test]
fn console_token_comes_from_the_environment() {
    let err = |text: &str| parse(text).unwrap_err().to_string();
    assert!(err("[ui]\nadmin_token_env = \"NOPE\"\n")
        .contains("the environment variable NOPE is not set"));
    // TOKEN is "s3cret": too short to guard the console.
    assert!(err("[ui]\nadmin_token_env = \"TOKEN\"\n").contains("shorter than 16"));
    assert!(err("[ui]\nlisten = \"127.0.0.1:8081\"\n").contains("admin_token_env is not"));
    assert!(parse("").unwrap().ui.is_none());
    let env = MapEnv(HashMap::from([("ADMIN", "0123456789abcdef0123")]));
    let c = Config::parse(
        Path::new("/etc/hexwatch/config.toml"),
        "[ui]\nadmin_token_env = \"ADMIN\"\nlisten = \"127.0.0.1:8081\"\n",
        &env,
    )
    .unwrap();
    let ui = c.ui.unwrap();
    assert_eq!(ui.listen, Some("127.0.0.1:8081".parse().unwrap()));
    assert!(!format!("{ui:?}").contains("0123456789abcdef"));
}

#[test]
fn acme_settings_are_checked() {
    let c = parse("[server.acme]\ndomains = [\"hexwatch.example.com\"]\ncontact = \"mailto:secops@example.com\"\n").unwrap();
    let a = c.server.acme.unwrap();
    assert_eq!(a.contact, "secops@example.com");
    assert_eq!(a.directory_url, LETS_ENCRYPT);
    assert_eq!(a.cache_dir, Path::new("/etc/hexwatch/data/acme"));
    let err = |text: &str| parse(text).unwrap_err().to_string();
    assert!(err("[server]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n[server.acme]\ndomains = [\"a.example\"]\ncontact = \"x@example.com\"\n")
        .contains("choose one source of certificates"));
    assert!(
        err("[server.acme]\ndomains = [\"*.example.com\"]\ncontact = \"x@example.com\"\n")
            .contains("is not a domain name")
    );
    assert!(
        err("[server.acme]\ndomains = []\ncontact = \"x@example.com\"\n")
            .contains("name at least one domain")
    );
    assert!(
        err("[server.acme]\ndomains = [\"a.example\"]\ncontact = \"nobody\"\n")
            .contains("server.acme.contact")
    );
    assert!(err("[server.acme]\ndomains = [\"a.example\"]\ncontact = \"x@example.com\"\ndirectory_url = \"http://ca.example/dir\"\n")
        .contains("https://"));
}

#[test]
fn empty_file_is_the_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.server.max_body_bytes, 1_048_576);
    assert_eq!(c.server.max_decoded_bytes, 16_777_216);
    assert_eq!(c.ingest.path, "/ingest/hex");
    assert_eq!(c.ingest.auth_header, "X-Hexwatch-Token");
    assert_eq!(c.rules.dir, Path::new("/etc/hexwatch/rules"));
    assert_eq!(c.storage.path, Path::new("/etc/hexwatch/data/hexwatch.db"));
    assert!(c.destinations.is_empty());
    assert_eq!(c.delivery.max_attempts, None);
    assert!(c.delivery.retry_for >= Duration::from_secs(24 * 3600));
}

#[test]
fn unknown_key_names_key_and_line() {
    let e = parse("[server]\nlisten = \"127.0.0.1:1\"\nmax_body_byte = 5\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_body_byte"), "{e}");
    assert!(e.contains("line 3"), "{e}");
}

#[test]
fn unknown_destination_key_is_rejected_with_line() {
    let e = parse(
        "[[destinations]]\nname = \"a\"\ntype = \"webhook\"\nurl = \"https://x\"\nmin_severty = \"HIGH\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("min_severty") && e.contains("line 5"), "{e}");
}

#[test]
fn destinations_expand_env_and_validate() {
    let c = parse(
        r#"
[[destinations]]
name = "hook"
type = "webhook"
url = "https://example.com/h"
min_severity = "MEDIUM"
headers = { "Authorization" = "Bearer ${TOKEN}" }
signing_secret_env = "HOOK"

[[destinations]]
name = "mail"
type = "email"
smtp_url = "smtp://127.0.0.1:2525"
from = "a@example.com"
to = ["b@example.com"]
"#,
    )
    .unwrap();
    let DestinationKind::Webhook(w) = &c.destinations[0].kind else {
        panic!()
    };
    assert_eq!(w.headers[0].1, "Bearer s3cret");
    assert_eq!(w.signing_secret.as_deref(), Some(&b"k"[..]));
    assert_eq!(c.destinations[0].min_severity, Severity::Medium);
    let DestinationKind::Email(e) = &c.destinations[1].kind else {
        panic!()
    };
    assert_eq!(
        (e.host.as_str(), e.port, e.tls),
        ("127.0.0.1", 2525, SmtpTls::None)
    );
}

#[test]
fn urls_are_shown_without_secrets() {
    assert_eq!(
        shown_url("https://hooks.slack.com/services/${SLACK_PATH}"),
        "https://hooks.slack.com/services/${SLACK_PATH}"
    );
    assert_eq!(
        shown_url("https://user:pw@siem.example:8443/hook?token=abc&x=1"),
        "https://***@siem.example:8443/hook?***"
    );
    assert_eq!(
        scrub("failed for https://x/T0K3N/y", &["T0K3N".into()]),
        "failed for https://x/***/y"
    );
    let c = parse(
        "[[destinations]]\nname = \"h\"\ntype = \"webhook\"\nurl = \"https://x/${TOKEN}?k=1\"\n",
    )
    .unwrap();
    let DestinationKind::Webhook(w) = &c.destinations[0].kind else {
        panic!()
    };
    assert_eq!(w.url, "https://x/s3cret?k=1");
    assert_eq!(w.url_shown, "https://x/${TOKEN}?***");
    // The expanded value, and the query, which logs show as *** too.
    assert_eq!(w.secrets, vec!["s3cret".to_string(), "k=1".to_string()]);
    assert!(!format!("{c:?}").contains("s3cret"));
}

#[test]
fn smtp_urls_and_credentials() {
    assert_eq!(
        parse_smtp_url("smtp://mail.example.com?tls=required").unwrap(),
        ("mail.example.com".into(), 587, SmtpTls::StartTls)
    );
    assert_eq!(
        parse_smtp_url("smtps://mail.example.com").unwrap(),
        ("mail.example.com".into(), 465, SmtpTls::Implicit)
    );
    assert!(parse_smtp_url("smtp://u:p@host").is_err());
    assert!(parse_smtp_url("http://host").is_err());
    let e = parse(
        "[[destinations]]\nname = \"m\"\ntype = \"email\"\nsmtp_url = \"smtp://relay:25\"\nsmtp_user_env = \"TOKEN\"\nsmtp_password_env = \"HOOK\"\nfrom = \"a@b\"\nto = [\"c@d\"]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("credentials are only sent over TLS"), "{e}");
}

#[test]
fn unset_variable_is_named() {
    let e = parse(
        "[[destinations]]\nname = \"h\"\ntype = \"webhook\"\nurl = \"https://x\"\nheaders = { A = \"${NOPE}\" }\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("NOPE") && e.contains("destinations[0].headers.A"),
        "{e}"
    );
}

#[test]
fn wrong_type_keys_and_bad_values() {
    let e = parse(
        "[[destinations]]\nname = \"h\"\ntype = \"webhook\"\nurl = \"https://x\"\nto = [\"a@b\"]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("destinations[0].to: not a key of a webhook destination"),
        "{e}"
    );
    let e = parse("[[destinations]]\nname = \"h\"\ntype = \"pager\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"pager\" is not a destination type"), "{e}");
    let e = parse("[server]\nlisten = \"nowhere\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("server.listen"), "{e}");
    let e = parse("[server]\ntls_cert = \"c.pem\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("go together"), "{e}");
}
