//! Commands from applications to devices through a real RabbitMQ: the test plays the
//! gateway's side (the device's queue as the contract declares it, consumed, answers
//! published to `reply_to`) and checks what the HTTP client and the device each see.

mod command_rig;
mod common;

use command_rig::*;
use common::{required_env, wait_for, Server};
use serde_json::{json, Value};
use tributary_contract::command::{
    valid_command_id, DIRECT_REPLY_TO, HEADER_NAME, HEADER_SENDER, MAX_TTL_SECONDS,
};

#[tokio::test]
async fn a_command_is_queued_with_every_property_of_the_contract() {
    let rig = Rig::start(json!({})).await;
    let queue = rig.device_queue("press-1", 10).await;
    let mut device = rig.consume(&queue).await;

    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let answer = rig
        .post_as(
            "press-1",
            "fan/set",
            "?ttlSeconds=90",
            OPERATOR,
            br#"{"rpm": 1200}"#,
            Some("application/json"),
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.body["status"], json!("queued"));
    let id = answer.body["commandId"]
        .as_str()
        .expect("a command id")
        .to_owned();
    assert!(valid_command_id(&id), "{id}");

    let command = next_command(&mut device).await;
    assert_eq!(command.data, br#"{"rpm": 1200}"#.to_vec());
    assert_eq!(header(&command, HEADER_NAME).as_deref(), Some("fan/set"));
    assert_eq!(header(&command, HEADER_SENDER).as_deref(), Some("operator"));
    let properties = &command.properties;
    assert_eq!(text(properties.message_id()), Some(id.clone()));
    assert_eq!(text(properties.correlation_id()), Some(id.clone()));
    assert_eq!(text(properties.expiration()).as_deref(), Some("90000"));
    assert_eq!(
        text(properties.content_type()).as_deref(),
        Some("application/json")
    );
    assert_eq!(*properties.delivery_mode(), Some(2), "persistent");
    assert!(
        properties.timestamp().is_some_and(|t| t >= before),
        "timestamp in ms"
    );
    assert_eq!(*properties.reply_to(), None, "no reply-to without a wait");
    assert_eq!(command.routing_key.as_str(), "press-1");

    // No Content-Type: application/json; another one passes through; the default TTL.
    rig.post("press-1", "reboot", "", OPERATOR, b"{}").await;
    let command = next_command(&mut device).await;
    assert_eq!(
        text(command.properties.content_type()).as_deref(),
        Some("application/json")
    );
    assert_eq!(
        text(command.properties.expiration()).as_deref(),
        Some("3600000")
    );
    rig.post_as(
        "press-1",
        "display/text",
        "",
        OPERATOR,
        b"hello",
        Some("text/plain"),
    )
    .await;
    let command = next_command(&mut device).await;
    assert_eq!(
        text(command.properties.content_type()).as_deref(),
        Some("text/plain")
    );
    assert_eq!(command.data, b"hello".to_vec());

    assert_eq!(
        rig.server
            .metric("tributary_api_commands_total{result=\"queued\"}")
            .await,
        3.0
    );
    rig.finish().await;
}

#[tokio::test]
async fn a_waiting_request_gets_the_device_answer() {
    let rig = Rig::start(json!({})).await;
    let queue = rig.device_queue("press-1", 10).await;
    let mut device = rig.consume(&queue).await;

    let request = rig.post("press-1", "fan/get", "?waitSeconds=10", OPERATOR, b"");
    let device_side = async {
        let command = next_command(&mut device).await;
        // The broker rewrites the pseudo queue into the address of the API's channel.
        let reply_to = text(command.properties.reply_to()).unwrap_or_default();
        assert!(reply_to.starts_with(DIRECT_REPLY_TO), "{reply_to}");
        rig.answer(&command, 201, "application/json", br#"{"rpm": 900}"#)
            .await;
        text(command.properties.correlation_id())
    };
    let (answer, id) = tokio::join!(request, device_side);
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.body,
        json!({"commandId": id, "status": "answered", "responseStatus": 201,
               "contentType": "application/json", "response": {"rpm": 900},
               "responseEncoding": "json"})
    );

    // An answer that is not JSON comes back as base64.
    let request = rig.post("press-1", "camera/still", "?waitSeconds=10", OPERATOR, b"");
    let device_side = async {
        let command = next_command(&mut device).await;
        rig.answer(&command, 200, "image/png", &[0x89, b'P', b'N', b'G'])
            .await;
    };
    let (answer, ()) = tokio::join!(request, device_side);
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["response"], json!("iVBORw=="));
    assert_eq!(answer.body["responseEncoding"], json!("base64"));
    assert_eq!(answer.body["contentType"], json!("image/png"));

    let metric = |series: &'static str| rig.server.metric(series);
    assert_eq!(
        metric("tributary_api_commands_total{result=\"answered\"}").await,
        2.0
    );
    assert_eq!(
        metric("tributary_api_command_round_trip_seconds_count").await,
        2.0
    );
    assert_eq!(metric("tributary_api_commands_waiting").await, 0.0);
    rig.finish().await;
}

#[tokio::test]
async fn a_wait_without_an_answer_times_out_and_a_late_answer_is_dropped() {
    let rig = Rig::start(json!({})).await;
    let queue = rig.device_queue("press-1", 10).await;
    let mut device = rig.consume(&queue).await;

    let answer = rig
        .post("press-1", "reboot", "?waitSeconds=1", OPERATOR, b"{}")
        .await;
    assert_eq!(answer.status, 504, "{}", answer.body);
    assert_eq!(answer.body["status"], json!("timeout"));
    assert!(answer.body["commandId"].is_string());
    assert_eq!(
        rig.server.metric("tributary_api_commands_waiting").await,
        0.0
    );

    // The device answers after the client gave up: counted, handed to nobody.
    let command = next_command(&mut device).await;
    rig.answer(&command, 200, "application/json", b"{}").await;
    wait_for("the late answer to be counted", WAIT, || async {
        (rig.server
            .metric("tributary_api_command_responses_unmatched_total")
            .await
            == 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(
        rig.server
            .metric("tributary_api_commands_total{result=\"timeout\"}")
            .await,
        1.0
    );
    rig.finish().await;
}

#[tokio::test]
async fn a_device_without_a_queue_is_undeliverable() {
    let rig = Rig::start(json!({})).await;
    for query in ["", "?waitSeconds=5"] {
        let answer = rig
            .post("never-subscribed", "reboot", query, OPERATOR, b"{}")
            .await;
        assert_eq!(answer.status, 409, "{query}: {}", answer.body);
        assert_eq!(answer.body["status"], json!("undeliverable"));
        assert_eq!(answer.body["reason"], json!("NO_ROUTE"));
        assert!(answer.body["commandId"].is_string());
    }
    assert_eq!(
        rig.server.metric("tributary_api_commands_waiting").await,
        0.0
    );
    assert_eq!(
        rig.server
            .metric("tributary_api_commands_total{result=\"undeliverable\"}")
            .await,
        2.0
    );
    rig.finish().await;
}

#[tokio::test]
async fn a_full_device_queue_refuses_while_another_device_still_gets_commands() {
    let rig = Rig::start(json!({})).await;
    let full = rig.device_queue("press-1", 2).await;
    let other = rig.device_queue("press-2", 2).await;
    for i in 0..2 {
        let answer = rig
            .post("press-1", "step", "", OPERATOR, format!("{i}").as_bytes())
            .await;
        assert_eq!(answer.status, 202, "{}", answer.body);
    }
    let answer = rig.post("press-1", "step", "", OPERATOR, b"2").await;
    assert_eq!(answer.status, 429, "{}", answer.body);
    assert_eq!(answer.body["status"], json!("queueFull"));
    assert_eq!(
        answer
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("5")
    );
    assert_eq!(
        rig.queued(&full).await,
        2,
        "the refused command is not queued"
    );

    let answer = rig.post("press-2", "step", "", OPERATOR, b"0").await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(rig.queued(&other).await, 1);
    assert_eq!(
        rig.server
            .metric("tributary_api_commands_total{result=\"queueFull\"}")
            .await,
        1.0
    );
    rig.finish().await;
}

#[tokio::test]
async fn keys_need_the_command_permission_and_the_device_in_their_scope() {
    let rig = Rig::start(json!({})).await;
    let a1 = rig.device_queue("a-1", 10).await;
    let b1 = rig.device_queue("b-1", 10).await;

    let answer = rig.post("a-1", "reboot", "", READER, b"{}").await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert!(answer.body["error"]
        .as_str()
        .is_some_and(|e| e.contains("commands")));

    // Out of scope: the same answer as a read of that device, and nothing is sent.
    let answer = rig.post("b-1", "reboot", "", GROUP_A, b"{}").await;
    let read = rig.server.get("/v1/devices/b-1/latest", GROUP_A).await;
    assert_eq!((answer.status, answer.body), read);
    assert_eq!(read.0, 404);
    assert_eq!(rig.queued(&b1).await, 0);

    let answer = rig.post("a-1", "reboot", "", GROUP_A, b"{}").await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(rig.queued(&a1).await, 1);

    // The key's rate limit applies to commands.
    for _ in 0..2 {
        assert_eq!(
            rig.post("a-1", "reboot", "", TIGHT, b"{}").await.status,
            202
        );
    }
    let answer = rig.post("a-1", "reboot", "", TIGHT, b"{}").await;
    assert_eq!(answer.status, 429, "{}", answer.body);
    assert!(answer.headers.contains_key("retry-after"));
    assert_eq!(rig.queued(&a1).await, 3);
    assert_eq!(
        rig.server
            .metric("tributary_api_commands_total{result=\"refused\"}")
            .await,
        2.0
    );
    rig.finish().await;
}

#[tokio::test]
async fn invalid_requests_are_refused_before_anything_is_sent() {
    let rig = Rig::start(json!({})).await;
    let queue = rig.device_queue("press-1", 10).await;
    let over_ttl = format!("?ttlSeconds={}", MAX_TTL_SECONDS + 1);
    let long_device = "d".repeat(129);
    let long_name = "n".repeat(129);
    let cases: Vec<(&str, &str, &str)> = vec![
        ("press-1", "res/x", ""),
        ("press-1", "req", ""),
        ("press-1", "fan/+", ""),
        ("press-1", "a%20b", ""),
        ("press-1", &long_name, ""),
        ("a%23b", "reboot", ""),
        ("a+b", "reboot", ""),
        (&long_device, "reboot", ""),
        ("press-1", "reboot", "?ttlSeconds=0"),
        ("press-1", "reboot", &over_ttl),
        ("press-1", "reboot", "?ttlSeconds=soon"),
        ("press-1", "reboot", "?waitSeconds=11"),
        ("press-1", "reboot", "?waitSeconds=-1"),
        ("press-1", "reboot", "?wait=1"),
    ];
    for (device, name, query) in &cases {
        let answer = rig.post(device, name, query, OPERATOR, b"{}").await;
        assert_eq!(
            answer.status, 400,
            "{device} {name} {query}: {}",
            answer.body
        );
        assert!(answer.body["error"].is_string());
    }
    // A body past limits.maxRequestBytes (1024).
    let answer = rig
        .post("press-1", "firmware", "", OPERATOR, &[b'x'; 1025])
        .await;
    assert_eq!(answer.status, 413);
    assert_eq!(rig.queued(&queue).await, 0, "nothing was sent");
    // The boundary itself is accepted.
    let answer = rig
        .post("press-1", "firmware", "", OPERATOR, &[b'x'; 1024])
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(rig.queued(&queue).await, 1);
    let refused = rig
        .server
        .metric("tributary_api_commands_total{result=\"refused\"}")
        .await;
    assert_eq!(refused, cases.len() as f64);
    rig.finish().await;
}

#[tokio::test]
async fn waiting_requests_are_bounded_and_commands_without_a_wait_still_go() {
    let rig = Rig::start(json!({"maxWaiting": 2})).await;
    let queue = rig.device_queue("press-1", 10).await;
    let mut device = rig.consume(&queue).await;
    let first = rig.post("press-1", "slow/op", "?waitSeconds=10", OPERATOR, b"1");
    let second = rig.post("press-1", "slow/op", "?waitSeconds=10", OPERATOR, b"2");
    let past_the_bound = async {
        wait_for("two requests to wait", WAIT, || async {
            (rig.server.metric("tributary_api_commands_waiting").await == 2.0).then_some(())
        })
        .await;
        let refused = rig
            .post("press-1", "slow/op", "?waitSeconds=10", OPERATOR, b"3")
            .await;
        let sent = rig.post("press-1", "fast/op", "", OPERATOR, b"4").await;
        // The device answers the two waiting commands and sees the one that did not wait.
        let mut names = Vec::new();
        for _ in 0..3 {
            let command = next_command(&mut device).await;
            names.push(header(&command, HEADER_NAME).unwrap_or_default());
            if command.properties.reply_to().is_some() {
                rig.answer(&command, 200, "application/json", &command.data)
                    .await;
            }
        }
        names.sort();
        assert_eq!(names, ["fast/op", "slow/op", "slow/op"]);
        (refused, sent)
    };
    let (first, second, (refused, sent)) = tokio::join!(first, second, past_the_bound);
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.body["status"], json!("busy"));
    assert!(refused.headers.contains_key("retry-after"));
    assert_eq!(sent.status, 202, "{}", sent.body);
    let mut answers = vec![
        first.body["response"].clone(),
        second.body["response"].clone(),
    ];
    answers.sort_by_key(Value::to_string);
    assert_eq!((first.status, second.status), (200, 200));
    assert_eq!(
        answers,
        [json!(1), json!(2)],
        "each answer reached its own request"
    );
    assert_eq!(
        rig.server.metric("tributary_api_commands_waiting").await,
        0.0
    );
    rig.finish().await;
}

#[tokio::test]
async fn an_unreachable_broker_answers_503_and_the_api_keeps_serving() {
    let tenant = common::unique("t");
    let config = config(&tenant, "amqp://nobody:nothing@127.0.0.1:1/%2f", json!({}));
    let server = Server::start(config).await;
    let url = format!("{}/v1/devices/press-1/commands/reboot", server.base);
    for _ in 0..2 {
        let response = server
            .http
            .post(&url)
            .bearer_auth(OPERATOR)
            .body("{}")
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), 503);
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["status"], json!("error"));
        let error = body["error"].as_str().expect("an error");
        assert!(
            error.contains("unreachable") && !error.contains("nothing"),
            "{error}"
        );
    }
    assert_eq!(server.metric("tributary_api_commands_connected").await, 0.0);
    assert_eq!(
        server
            .metric("tributary_api_commands_total{result=\"error\"}")
            .await,
        2.0
    );
    let health = server
        .http
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status().as_u16(), 200);
    server.stop().await;
}

#[tokio::test]
async fn a_connection_closed_by_the_broker_is_reopened() {
    let rig = Rig::start(json!({})).await;
    let queue = rig.device_queue("press-1", 10).await;
    let api = required_env("TRIBUTARY_TEST_RABBITMQ_API", "rabbitmq.sh");
    let user = required_env("TRIBUTARY_TEST_RABBITMQ_API_USER", "rabbitmq.sh");
    let password = required_env("TRIBUTARY_TEST_RABBITMQ_API_PASSWORD", "rabbitmq.sh");
    let wanted = format!("tributary-api commands tributary.commands.{}", rig.tenant);
    let http = common::http_client();
    // The management API lists connections a few seconds after they open.
    let name = wait_for(
        "the publisher's connection in the management API",
        WAIT,
        || async {
            let list: Value = http
                .get(format!("{api}/api/connections"))
                .basic_auth(&user, Some(&password))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            list.as_array()?.iter().find_map(|c| {
                (c["client_properties"]["connection_name"] == json!(wanted))
                    .then(|| c["name"].as_str().map(str::to_owned))?
            })
        },
    )
    .await;
    let encoded = percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC);
    // A request waits for an answer (the device never answers) while the broker closes
    // the publisher's connection: the wait ends with a 503, not at its deadline.
    let waiting = rig.post("press-1", "slow/op", "?waitSeconds=10", OPERATOR, b"{}");
    let close = async {
        wait_for(
            "the waiting request's command to be queued",
            WAIT,
            || async { (rig.queued(&queue).await == 1).then_some(()) },
        )
        .await;
        http.delete(format!("{api}/api/connections/{encoded}"))
            .basic_auth(&user, Some(&password))
            .send()
            .await
            .expect("close the connection")
    };
    let (lost, closed) = tokio::join!(waiting, close);
    assert!(closed.status().is_success(), "{}", closed.status());
    assert_eq!(lost.status, 503, "{}", lost.body);
    assert_eq!(lost.body["status"], json!("error"));
    assert!(
        lost.body["error"]
            .as_str()
            .is_some_and(|e| e.contains("lost")),
        "{}",
        lost.body
    );
    let answer = wait_for("commands to be queued again", WAIT, || async {
        let answer = rig.post("press-1", "reboot", "", OPERATOR, b"{}").await;
        (answer.status == 202).then_some(answer)
    })
    .await;
    assert_eq!(answer.body["status"], json!("queued"));
    assert_eq!(
        rig.queued(&queue).await,
        2,
        "the command that waited, and the one answered 202"
    );
    assert_eq!(
        rig.server.metric("tributary_api_commands_connected").await,
        1.0
    );
    rig.finish().await;
}
