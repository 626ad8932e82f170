use super::*;
use crate::kv::Bucket;
use crate::service::test_support::service_with_outage;
use tessera_broker::codec::Version;

fn password_connect(user: &str, password: &str) -> ConnectRequest {
    ConnectRequest {
        client_id: "c".into(),
        username: Some(user.into()),
        password: Some(Bytes::from(password.to_string())),
        method: None,
        data: None,
        peer: "192.0.2.7:50000".parse().unwrap(),
        transport: "tcp",
        listener: "127.0.0.1:1883".parse().unwrap(),
        version: Version::V5,
        certificate: None,
    }
}

fn refused_with(step: &AuthStep) -> ReasonCode {
    match step {
        AuthStep::Failure(f) => f.reason,
        AuthStep::Success(_) => panic!("logged in"),
        AuthStep::Continue { .. } => panic!("asked for more"),
    }
}

#[tokio::test]
async fn a_store_outage_is_not_a_bad_password_and_counts_toward_no_backoff() {
    let (_dir, service, outage) = service_with_outage();
    service.add_user("alice", "right").unwrap();
    let backoff = Arc::new(Backoff::new(2));
    let auth = OAuthAuthenticator(Arc::new(OAuthMechanism {
        service,
        auth: AuthConfig::default(),
        access_publish: AccessRules::default(),
        access_subscribe: AccessRules::default(),
        backoff: backoff.clone(),
        issuers: Arc::default(),
        endpoint: Arc::default(),
    }));
    outage.fail(&[Bucket::Users]);
    for _ in 0..5 {
        let step = auth.connect(password_connect("alice", "right")).await;
        assert_eq!(refused_with(&step), ReasonCode::SERVER_UNAVAILABLE);
    }
    assert!(backoff.check(&crate::backoff::user_key("alice")).is_ok());
    assert!(
        backoff
            .check(&crate::backoff::address_key([192, 0, 2, 7].into()))
            .is_ok()
    );
    // Back up: the right password logs in at once, a wrong one is a bad password.
    outage.fail(&[]);
    let step = auth.connect(password_connect("alice", "right")).await;
    assert!(matches!(step, AuthStep::Success(_)));
    let step = auth.connect(password_connect("alice", "wrong")).await;
    assert_eq!(refused_with(&step), ReasonCode::BAD_USER_NAME_OR_PASSWORD);
}
