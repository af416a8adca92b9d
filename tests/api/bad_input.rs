//! Arbitrary requests at the real webhook routes: without a valid signature (or URL secret) none
//! gets a 2xx, none a 5xx, and none reaches the log.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::helpers::*;

fn arbitrary_request() -> impl Strategy<Value = (Vec<u8>, String)> {
    (proptest::collection::vec(any::<u8>(), 0..400), prop_oneof!["[ -~]{0,100}", ("[0-9]{10}", "[0-9a-f]{64}").prop_map(|(t, v)| format!("t={t},v1={v}"))])
}

#[test]
fn arbitrary_deliveries_without_a_valid_signature_are_refused_and_never_logged() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let app = runtime.block_on(spawn_app());
    let mut runner = TestRunner::new(Config { cases: 64, ..Config::default() });
    runner
        .run(&arbitrary_request(), |(body, header)| {
            let statuses = runtime.block_on(async {
                let body_text = String::from_utf8_lossy(&body).into_owned();
                let stripe = app.post_stripe(ACCOUNT, &body_text, Some(&header)).await.status().as_u16();
                let lemonsqueezy = app.post_lemonsqueezy(ACCOUNT, &body_text, Some(&header)).await.status().as_u16();
                let kommo = app.post_kommo(ACCOUNT, "not-the-secret", &body_text).await.status().as_u16();
                [stripe, lemonsqueezy, kommo]
            });
            for status in statuses {
                prop_assert!((400..500).contains(&status), "answered {status}");
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(runtime.block_on(app.events()), 0, "nothing reached the log");
}
