use serde_json::Value;

use crate::helpers::*;

/// A batched body as Kommo sends it: two leads changing stage, one added lead and a note, with
/// custom fields (a select with `enum`, a scalar date) and tags.
fn batch(account_id: i64) -> String {
    let account_id = account_id.to_string();
    let pairs: Vec<(&str, &str)> = vec![
        ("account[subdomain]", "acme"),
        ("account[id]", &account_id),
        ("account[_links][self]", "https://acme.kommo.com"),
        ("leads[status][0][id]", "15318175"),
        ("leads[status][0][name]", "Website redesign"),
        ("leads[status][0][status_id]", "67548619"),
        ("leads[status][0][old_status_id]", "67548607"),
        ("leads[status][0][pipeline_id]", "8572511"),
        ("leads[status][0][price]", "2000"),
        ("leads[status][0][last_modified]", "1726572758"),
        ("leads[status][0][tags][0][id]", "80147"),
        ("leads[status][0][tags][0][name]", "vip"),
        ("leads[status][0][custom_fields][0][id]", "1246483"),
        ("leads[status][0][custom_fields][0][values][0][value]", "Pro"),
        ("leads[status][0][custom_fields][0][values][0][enum]", "908107"),
        ("leads[status][0][custom_fields][1][id]", "1246485"),
        ("leads[status][0][custom_fields][1][values][0]", "1725915600"),
        ("leads[status][1][id]", "15318176"),
        ("leads[status][1][status_id]", "142"),
        ("leads[status][1][pipeline_id]", "8572511"),
        ("leads[status][1][last_modified]", "1726572759"),
        ("leads[add][0][id]", "15318177"),
        ("leads[add][0][status_id]", "67548607"),
        ("leads[add][0][pipeline_id]", "8572511"),
        ("leads[note][0][note][id]", "555"),
        ("leads[note][0][note][element_id]", "15318175"),
        ("leads[note][0][note][text]", "Called the client"),
    ];
    form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
}

#[tokio::test]
async fn every_action_and_index_of_a_batch_becomes_an_event() {
    let app = spawn_app().await;

    let response = app.post_kommo(ACCOUNT, KOMMO_SECRET, &batch(KOMMO_ACCOUNT_ID)).await;

    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), serde_json::json!({ "accepted": 4, "duplicates": 0 }));
    let rows: Vec<(String, Option<i64>)> =
        sqlx::query_as("SELECT kind, lead_id FROM events WHERE source = 'kommo' ORDER BY kind, lead_id").fetch_all(&app.db.pool).await.unwrap();
    assert_eq!(
        rows,
        vec![
            ("leads.add".to_owned(), Some(15318177)),
            ("leads.note".to_owned(), Some(15318175)),
            ("leads.status".to_owned(), Some(15318175)),
            ("leads.status".to_owned(), Some(15318176)),
        ]
    );
    let payload: Value =
        sqlx::query_scalar("SELECT payload FROM events WHERE kind = 'leads.status' AND lead_id = 15318175").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(payload["account"]["id"], KOMMO_ACCOUNT_ID.to_string());
    assert_eq!(payload["item"]["custom_fields"][0]["values"][0]["enum"], "908107");
    assert_eq!(payload["item"]["custom_fields"][1]["values"][0], "1725915600");
    assert_eq!(payload["item"]["tags"][0]["name"], "vip");
    let headers: Value = sqlx::query_scalar("SELECT headers FROM events LIMIT 1").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(headers["user-agent"], "amoCRM-Webhooks/3.0");
}

#[tokio::test]
async fn kommo_retrying_a_batch_changes_nothing() {
    let app = spawn_app().await;
    app.post_kommo(ACCOUNT, KOMMO_SECRET, &batch(KOMMO_ACCOUNT_ID)).await;

    let response = app.post_kommo(ACCOUNT, KOMMO_SECRET, &batch(KOMMO_ACCOUNT_ID)).await;

    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), serde_json::json!({ "accepted": 0, "duplicates": 4 }));
    assert_eq!(app.events().await, 4);
}

#[tokio::test]
async fn a_later_change_of_the_same_lead_is_a_new_event() {
    let app = spawn_app().await;
    app.post_kommo(ACCOUNT, KOMMO_SECRET, &batch(KOMMO_ACCOUNT_ID)).await;
    let later = batch(KOMMO_ACCOUNT_ID).replace("1726572758", "1726579999");

    let answer: Value = app.post_kommo(ACCOUNT, KOMMO_SECRET, &later).await.json().await.unwrap();

    assert_eq!(answer, serde_json::json!({ "accepted": 1, "duplicates": 3 }));
}

#[tokio::test]
async fn rejected_kommo_deliveries_change_nothing() {
    let app = spawn_app().await;
    let one_more_character = format!("{KOMMO_SECRET}x");
    let cases: Vec<(&str, &str, &str, String, u16)> = vec![
        ("wrong URL secret", ACCOUNT, "not-the-secret", batch(KOMMO_ACCOUNT_ID), 401),
        ("secret with one more character", ACCOUNT, &one_more_character, batch(KOMMO_ACCOUNT_ID), 401),
        ("another account's id", ACCOUNT, KOMMO_SECRET, batch(99999), 401),
        ("unknown account", "nobody", KOMMO_SECRET, batch(KOMMO_ACCOUNT_ID), 404),
        ("no account id", ACCOUNT, KOMMO_SECRET, "leads%5Bstatus%5D%5B0%5D%5Bid%5D=1".into(), 400),
        ("broken bracket key", ACCOUNT, KOMMO_SECRET, format!("{}&leads%5Bstatus=1", batch(KOMMO_ACCOUNT_ID)), 400),
    ];
    for (name, account, secret, body, status) in cases {
        let response = app.post_kommo(account, secret, &body).await;
        assert_eq!(response.status().as_u16(), status, "case {name:?}");
    }
    assert_eq!(app.events().await, 0);
}
