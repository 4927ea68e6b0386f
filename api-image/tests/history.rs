//! History, buckets, devices and latest values against a real PostgreSQL (and Redis): every
//! answer is checked against the same question asked independently in plain SQL.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use common::*;
use serde_json::json;

fn at(base: &DateTime<Utc>, millis: i64) -> String {
    (*base + chrono::Duration::milliseconds(millis)).to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn base() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0)
        .single()
        .expect("time")
}

/// Follows `nextCursor` to the end; every row's id, in page order.
async fn all_pages(server: &Server, path: &str, key: &str, limit: u32) -> (Vec<String>, usize) {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut url = format!("{path}{sep}limit={limit}");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let body = server.ok(&url, key).await;
        pages += 1;
        for item in body["items"].as_array().expect("items") {
            ids.push(item["id"].as_str().expect("id").to_string());
        }
        match body["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return (ids, pages),
        }
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// The buckets the API answered equal those of an independent query (bucket start by
/// `floor(epoch / width)`, not `date_bin`).
async fn assert_buckets_match(
    server: &Server,
    table: &Table,
    api_path: &str,
    device_condition: &str,
    from: &str,
    to: &str,
    width: i64,
) {
    let body = server.ok(api_path, ADMIN).await;
    let answered = body["buckets"].as_array().expect("buckets").clone();
    let sql = format!(
        "SELECT (floor(extract(epoch FROM received_at) / {width}) * {width})::bigint AS b, \
         count(v), avg(v), min(v), max(v), count(*) FROM ( \
           SELECT received_at, CASE WHEN jsonb_typeof(payload -> 'temperature') = 'number' \
             THEN (payload ->> 'temperature')::float8 END AS v \
           FROM {} WHERE {device_condition} \
             AND received_at >= $1::text::timestamptz AND received_at < $2::text::timestamptz) s \
         GROUP BY 1 ORDER BY 1",
        table.name
    );
    let expected = table
        .client
        .query(&sql, &[&from, &to])
        .await
        .expect("independent query");
    assert!(!expected.is_empty(), "the test data must fall in the range");
    assert_eq!(
        answered.len(),
        expected.len(),
        "bucket count for {api_path}"
    );
    for (got, want) in answered.iter().zip(&expected) {
        let start = DateTime::parse_from_rfc3339(got["start"].as_str().expect("start"))
            .expect("start is RFC 3339")
            .timestamp();
        assert_eq!(start, want.get::<_, i64>(0), "bucket start");
        assert_eq!(
            got["count"].as_i64(),
            Some(want.get::<_, i64>(1)),
            "count at {start}"
        );
        assert_eq!(
            got["rows"].as_i64(),
            Some(want.get::<_, i64>(5)),
            "rows at {start}"
        );
        for (name, index) in [("avg", 2), ("min", 3), ("max", 4)] {
            let want: Option<f64> = want.get(index);
            let got = got[name].as_f64();
            match (got, want) {
                (Some(g), Some(w)) => assert!(close(g, w), "{name} at {start}: {g} vs {w}"),
                (None, None) => {}
                other => panic!("{name} at {start}: {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn range_rows_and_buckets_equal_plain_sql() {
    let table = Table::create().await;
    let base = base();
    let devices = ["a-1", "a-2", "b-1"];
    let rows: Vec<Row> = (0..600)
        .map(|i: i64| {
            let temperature = if i % 13 == 0 {
                json!("n/a")
            } else {
                json!(20.0 + (i % 17) as f64 * 0.37 - (i % 5) as f64 * 1.1)
            };
            let payload = if i % 19 == 0 {
                json!({"seq": i})
            } else {
                json!({"seq": i, "temperature": temperature})
            };
            Row::new(
                devices[(i % 3) as usize],
                &at(&base, i * 7_500 + i % 7),
                payload,
            )
        })
        .collect();
    table.insert(&rows).await;
    let dir = temp_dir();
    let server = Server::start(config(&table, &dir, json!({}))).await;

    // Rows of one device in a range, all pages, equal the plain query.
    let (from, to) = (at(&base, 60_000), at(&base, 1_260_000));
    let (ids, pages) = all_pages(
        &server,
        &format!("/v1/devices/a-1/history?from={from}&to={to}"),
        ADMIN,
        25,
    )
    .await;
    let expected: Vec<String> = table
        .client
        .query(
            &format!(
                "SELECT id FROM {} WHERE device = 'a-1' AND received_at >= $1::text::timestamptz \
                 AND received_at < $2::text::timestamptz ORDER BY received_at, id",
                table.name
            ),
            &[&from, &to],
        )
        .await
        .expect("plain query")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(expected.len() > 25, "several pages of data");
    assert_eq!(ids, expected);
    println!(
        "range: {} rows in {pages} pages equal the plain query",
        ids.len()
    );

    // Buckets of a JSON field, one device and groups, equal an independent aggregation.
    let (from, to) = (at(&base, 0), at(&base, 4_500_000));
    assert_buckets_match(
        &server,
        &table,
        &format!("/v1/devices/a-1/history?from={from}&to={to}&bucket=1m&field=payload.temperature"),
        "device = 'a-1'",
        &from,
        &to,
        60,
    )
    .await;
    assert_buckets_match(
        &server,
        &table,
        &format!(
            "/v1/history?devicePrefix=a-&from={from}&to={to}&bucket=5m&field=payload.temperature"
        ),
        "device LIKE 'a-%'",
        &from,
        &to,
        300,
    )
    .await;
    assert_buckets_match(
        &server,
        &table,
        &format!(
            "/v1/history?devices=a-2,b-1&from={from}&to={to}&bucket=90s&field=payload.temperature"
        ),
        "device IN ('a-2', 'b-1')",
        &from,
        &to,
        90,
    )
    .await;
    println!("buckets of 1m, 5m and 90s equal the independent aggregation");

    server.stop().await;
    table.drop_table().await;
}

#[tokio::test]
async fn pages_are_stable_while_rows_arrive() {
    let table = Table::create().await;
    let base = base();
    // Pairs of rows share a time, so only the id orders them.
    let rows: Vec<Row> = (0..400)
        .map(|i: i64| Row::new("a-1", &at(&base, (i / 2) * 1_000), json!({"seq": i})))
        .collect();
    table.insert(&rows).await;
    let dir = temp_dir();
    let server = Server::start(config(&table, &dir, json!({}))).await;
    let (from, to) = (at(&base, 0), at(&base, 3_600_000));
    let range_query = format!(
        "SELECT id FROM {} WHERE device = 'a-1' AND received_at >= $1::text::timestamptz \
         AND received_at < $2::text::timestamptz ORDER BY received_at, id",
        table.name
    );
    let before: Vec<String> = table
        .client
        .query(&range_query, &[&from, &to])
        .await
        .expect("query")
        .iter()
        .map(|r| r.get(0))
        .collect();

    let mut pages: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let (mut late, mut ahead) = (HashSet::new(), Vec::new());
    let mut page = 0i64;
    loop {
        let mut url = format!("/v1/devices/a-1/history?from={from}&to={to}&limit=37");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let body = server.ok(&url, ADMIN).await;
        for item in body["items"].as_array().expect("items") {
            pages.push(item["id"].as_str().expect("id").into());
        }
        // Meanwhile: a late row behind the cursor, a new row ahead of it, another device.
        let behind = Row::new("a-1", &at(&base, 250 + page), json!({"late": page}));
        let new = Row::new(
            "a-1",
            &at(&base, 1_000_000 + page * 1_000),
            json!({"new": page}),
        );
        let other = Row::new("a-2", &at(&base, 5_000 + page), json!({"other": page}));
        late.insert(behind.id.clone());
        ahead.push(new.id.clone());
        table.insert(&[behind, new, other]).await;
        page += 1;
        match body["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.into()),
            None => break,
        }
    }
    let unique: HashSet<&String> = pages.iter().collect();
    assert_eq!(unique.len(), pages.len(), "no row appears twice");
    // Every row of the first snapshot once, in order, then the rows that arrived ahead.
    let mut expected = before.clone();
    expected.extend(ahead.iter().take(ahead.len() - 1).cloned());
    assert_eq!(pages, expected);
    // The same as one big query now, without the late rows that landed behind the cursor.
    let after: Vec<String> = table
        .client
        .query(&range_query, &[&from, &to])
        .await
        .expect("query")
        .iter()
        .map(|r| r.get(0))
        .filter(|id: &String| !late.contains(id))
        .filter(|id: &String| ahead.last() != Some(id))
        .collect();
    assert_eq!(pages, after);
    println!(
        "{} rows in {page} pages of 37 while {} rows arrived: no duplicates, none missing",
        pages.len(),
        3 * page
    );

    // Newest first pages are the same rows reversed.
    let (desc, _) = all_pages(
        &server,
        &format!("/v1/devices/a-1/history?from={from}&to={to}&order=desc"),
        ADMIN,
        50,
    )
    .await;
    let mut everything: Vec<String> = table
        .client
        .query(&range_query, &[&from, &to])
        .await
        .expect("query")
        .iter()
        .map(|r| r.get(0))
        .collect();
    everything.reverse();
    assert_eq!(desc, everything);

    server.stop().await;
    table.drop_table().await;
}

#[tokio::test]
async fn devices_and_latest_values_come_from_postgres_or_redis() {
    let table = Table::create().await;
    let base = base();
    let rows = vec![
        Row::new("a-1", &at(&base, 0), json!({"t": 1})),
        Row::new("a-1", &at(&base, 2_000), json!({"t": 3})),
        Row::new("a-1", &at(&base, 1_000), json!({"t": 2})),
        Row::new("b-1", &at(&base, 500), json!({"t": 9})),
    ];
    table.insert(&rows).await;
    let dir = temp_dir();
    let server = Server::start(config(&table, &dir, json!({}))).await;

    let body = server.ok("/v1/devices", ADMIN).await;
    assert_eq!(
        body["devices"],
        json!([
            {"device": "a-1", "lastSeen": "2026-01-05T10:00:02.000000Z", "messages": 3, "registered": false},
            {"device": "b-1", "lastSeen": "2026-01-05T10:00:00.500000Z", "messages": 1, "registered": false},
        ])
    );
    assert_eq!(body["rosterOmitted"], 0);
    let latest = server.ok("/v1/devices/a-1/latest", ADMIN).await;
    assert_eq!(latest["source"], "postgres");
    assert_eq!(latest["id"], json!(rows[1].id));
    assert_eq!(latest["value"]["payload"], json!({"t": 3}));
    assert_eq!(server.get("/v1/devices/zz/latest", ADMIN).await.0, 404);
    server.stop().await;

    // With Redis: the sink's key and its `#id` companion.
    let redis_url = required_env("TRIBUTARY_TEST_REDIS_URL", "redis.sh");
    let prefix = unique("api");
    let client = redis::Client::open(redis_url.as_str()).expect("redis url");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| {
            panic!("Redis is unreachable ({e}); run `tests/services/redis.sh start`")
        });
    let key = format!("{prefix}:latest:a-1");
    let stored = json!({"device": "a-1", "payload": {"t": 42}});
    let _: () = redis::pipe()
        .cmd("SET")
        .arg(&key)
        .arg(stored.to_string())
        .cmd("SET")
        .arg(format!("{key}#id"))
        .arg("01JREDIS")
        .query_async(&mut connection)
        .await
        .expect("redis set");
    let redis_file = dir.join("redis-url");
    std::fs::write(&redis_file, &redis_url).expect("write");
    let server = Server::start(config(
        &table,
        &dir,
        json!({"redis": {"urlFile": redis_file, "keyTemplate": format!("{prefix}:latest:{{device}}")}}),
    ))
    .await;
    let latest = server.ok("/v1/devices/a-1/latest", ADMIN).await;
    assert_eq!(
        latest,
        json!({"device": "a-1", "source": "redis", "id": "01JREDIS", "value": stored})
    );
    assert_eq!(
        server.get("/v1/devices/b-1/latest", ADMIN).await.0,
        404,
        "no key for b-1"
    );
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .arg(format!("{key}#id"))
        .query_async(&mut connection)
        .await
        .expect("redis del");
    server.stop().await;
    table.drop_table().await;
}

#[tokio::test]
async fn device_prefixes_match_literally_not_as_patterns() {
    let table = Table::create().await;
    let base = base();
    let devices = ["s_1", "sx1", "s%1", "s%x", "s\\1", "t_1"];
    let rows: Vec<Row> = devices
        .iter()
        .enumerate()
        .map(|(i, device)| Row::new(device, &at(&base, i as i64), json!({"t": i})))
        .collect();
    table.insert(&rows).await;
    let dir = temp_dir();
    let server = Server::start(config(&table, &dir, json!({}))).await;
    // `_` and `%` are LIKE wildcards and `\` its escape: a prefix holding them still
    // matches only ids that start with exactly those characters.
    for (prefix, expected) in [
        ("s_", vec!["s_1"]),
        ("s%25", vec!["s%1", "s%x"]),
        ("s%5C", vec!["s\\1"]),
        ("s", vec!["s_1", "sx1", "s%1", "s%x", "s\\1"]),
    ] {
        let body = server
            .ok(&format!("/v1/history?devicePrefix={prefix}"), ADMIN)
            .await;
        let mut got: Vec<&str> = body["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|item| item["device"].as_str())
            .collect();
        got.sort_unstable();
        let mut expected = expected;
        expected.sort_unstable();
        assert_eq!(got, expected, "devicePrefix={prefix}");
    }
    server.stop().await;
    table.drop_table().await;
}

#[tokio::test]
async fn questions_the_table_cannot_answer_are_400_not_500() {
    let table = Table::create().await;
    let base = base();
    table
        .insert(&[Row::new("a-1", &at(&base, 0), json!({"t": 1}))])
        .await;
    let dir = temp_dir();
    let server = Server::start(config(&table, &dir, json!({}))).await;
    let (from, to) = (at(&base, 0), at(&base, 60_000));
    let history = "/v1/devices/a-1/history";
    for (query, why) in [
        (
            format!("?from={from}&to={to}&bucket=1m&field=nosuch.t"),
            "no such column",
        ),
        (
            format!("?from={from}&to={to}&bucket=1m&field=topic"),
            "a text column is not a number",
        ),
        (
            format!("?from={from}&bucket=1m&field=payload.t"),
            "buckets need `to`",
        ),
        (
            format!("?from={from}&to=2027-01-01T00:00:00Z&bucket=1s&field=payload.t"),
            "too many buckets",
        ),
        (format!("?from={to}&to={from}"), "from after to"),
        (
            "?form=2026-01-01T00:00:00Z".to_string(),
            "unknown parameter",
        ),
        ("?cursor=garbage".to_string(), "bad cursor"),
        ("?limit=100000".to_string(), "limit above the maximum"),
    ] {
        let (status, body) = server.get(&format!("{history}{query}"), ADMIN).await;
        assert_eq!(status, 400, "{why}: {body}");
        assert!(body["error"].is_string(), "{why}: {body}");
    }
    // Answers still work afterwards (no connection left broken).
    let body = server
        .ok(
            &format!("{history}?from={from}&to={to}&bucket=1m&field=payload.t"),
            ADMIN,
        )
        .await;
    assert_eq!(body["buckets"][0]["avg"], json!(1.0));
    tokio::time::timeout(Duration::from_secs(10), server.stop())
        .await
        .expect("stops");
    table.drop_table().await;
}
