//! What the console and its API give away, and to whom: quarantined records
//! in bounded parts, sessions that end at logout, wrong credentials slowed,
//! no filesystem paths.

use serde_json::Value;

use crate::console::{csrf, login, no_redirects, page, start, TOKEN};
use crate::support::*;

/// A destination nothing listens on (these tests deliver nothing).
const NO_HOOK: &str = "http://127.0.0.1:9/";

/// Twelve quarantined 16 MB bodies made one `/api/quarantine` answer 201 MB.
/// Lists now carry a 2,000-character preview and the size; the whole record
/// is one request of its own, streamed as plain text to download.
#[tokio::test]
async fn api_quarantine_returns_whole_raw_bodies() {
    let mut d = start("", NO_HOOK).await;
    let big = format!("{{\"note\":\"{}\"}}", "a".repeat(3 << 20));
    for _ in 0..3 {
        let r = client()
            .post(d.ingest_url())
            .header(AUTH, SECRET)
            .header("content-encoding", "gzip")
            .body(gzip(big.as_bytes()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422);
    }
    let base = format!("http://{}", d.addr);
    let r = client()
        .get(format!("{base}/api/quarantine"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.len() < 20_000, "the list is {} bytes", text.len());
    let list: Value = serde_json::from_str(&text).unwrap();
    let rows = list["quarantine"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for row in rows {
        assert_eq!(row["size"], big.len());
        assert_eq!(row["preview"].as_str().unwrap().chars().count(), 2000);
        assert!(row.get("raw").is_none(), "{row}");
    }

    let id = rows[0]["id"].as_i64().unwrap();
    let r = client()
        .get(format!("{base}/api/quarantine/{id}/raw"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let headers = r.headers().clone();
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert!(headers["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("attachment"));
    assert_eq!(r.text().await.unwrap(), big, "the record whole, as sent");
    let missing = client()
        .get(format!("{base}/api/quarantine/999999/raw"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let anonymous = client()
        .get(format!("{base}/api/quarantine/{id}/raw"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    d.stop().await;
}

/// Logging out only cleared the browser's cookie: the cookie itself stayed
/// valid for its 12 hours. It is now refused, by the API and the pages.
#[tokio::test]
async fn logout_does_not_end_the_session() {
    let mut d = start("", NO_HOOK).await;
    let base = format!("http://{}", d.addr);
    let cookie = login(&base).await;
    let (status, html, _) = page(&base, "/ui/alerts", &cookie).await;
    assert_eq!(status, 200);
    let r = no_redirects()
        .post(format!("{base}/ui/logout"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf(&html))])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let (status, _, headers) = page(&base, "/ui/alerts", &cookie).await;
    assert_eq!(status, 303, "the old cookie still opens pages");
    assert_eq!(headers["location"], "/ui/login");
    let r = client()
        .get(format!("{base}/api/alerts"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the old cookie still opens the API");
    // A new login works.
    let again = login(&base).await;
    assert_eq!(page(&base, "/ui/alerts", &again).await.0, 200);
    d.stop().await;
}

/// Wrong Bearer tokens were answered at once, about 2,800 a second, while the
/// login form was slowed. Every wrong credential is now answered after half
/// a second, at most four at a time; the rest are refused with 429, and the
/// right token is answered meanwhile.
#[tokio::test]
async fn api_bearer_guessing_runs_unthrottled() {
    let mut d = start("", NO_HOOK).await;
    let url = format!("http://{}/api/health", d.addr);
    let guesses = (0..40).map(|i| {
        let url = url.clone();
        async move {
            let r = client()
                .get(url)
                .bearer_auth(format!("guess-{i:026}"))
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }
    });
    let right = async {
        let r = client().get(&url).bearer_auth(TOKEN).send().await.unwrap();
        r.status().as_u16()
    };
    let (statuses, right) = tokio::join!(futures_util::future::join_all(guesses), right);
    assert_eq!(right, 200);
    let refused = statuses.iter().filter(|s| **s == 429).count();
    let slowed = statuses.iter().filter(|s| **s == 401).count();
    assert_eq!(refused + slowed, 40, "{statuses:?}");
    assert!(refused > 0, "no guess refused: {statuses:?}");
    d.stop().await;
}

/// `/api/rules` showed a broken rule's error with its absolute path (the
/// unauthenticated `/readyz`: `sqlite_deleted_database_...` in hardening).
#[tokio::test]
async fn api_rules_and_readyz_show_absolute_filesystem_paths() {
    let mut d = start("", NO_HOOK).await;
    let dir = d.dir.canonicalize().unwrap().display().to_string();
    let r = client()
        .get(d.url("/api/rules"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let rules = r.text().await.unwrap();
    assert!(rules.contains("broken.rhai:1"), "{rules}");
    assert!(!rules.contains(&dir), "{rules}");
    d.stop().await;
}
