use super::*;
use serde_json::json;
use tributary_contract::worker_config::{ColumnMapping, DEFAULT_POSTGRES_BATCH};

/// A sink over `columns` (name, expression, type); its URL file is never connected to.
fn sink(columns: &[(&str, &str, &str)]) -> PostgresSink {
    let dir = std::env::temp_dir().join(format!("tributary-pg-unit-{}", ulid::Ulid::generate()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url_file = dir.join("url");
    std::fs::write(&url_file, "postgres://u:p@127.0.0.1:1/db").expect("url file");
    let config = PostgresSinkConfig {
        name: "rows".into(),
        url_file,
        ca_file: None,
        table: "readings".into(),
        id_column: "id".into(),
        columns: columns
            .iter()
            .map(|(name, expr, sql_type)| ColumnMapping {
                name: (*name).into(),
                expr: (*expr).into(),
                r#type: (*sql_type).into(),
            })
            .collect(),
        create_table: false,
        batch: DEFAULT_POSTGRES_BATCH,
    };
    let sink = PostgresSink::build(&CelEnv::default(), &config).expect("build");
    let _ = std::fs::remove_dir_all(&dir);
    sink
}

fn record(id: &str, payload: Value) -> Record {
    Record {
        id: id.into(),
        value: json!({"id": id, "device": "d1", "payload": payload}),
    }
}

#[test]
fn values_are_sent_as_the_text_postgres_reads() {
    // No escaping: each value is a parameter of its own, not a field of a COPY line.
    assert_eq!(text_of(&json!("a\tb\\c\nd")).as_deref(), Some("a\tb\\c\nd"));
    assert_eq!(text_of(&json!(21.5)).as_deref(), Some("21.5"));
    assert_eq!(text_of(&json!(-7)).as_deref(), Some("-7"));
    assert_eq!(
        text_of(&json!(u64::MAX)).as_deref(),
        Some("18446744073709551615")
    );
    assert_eq!(text_of(&json!(true)).as_deref(), Some("true"));
    // Objects and arrays as JSON, which a jsonb or json column parses.
    assert_eq!(
        text_of(&json!({"k": [1, "x", null]})).as_deref(),
        Some(r#"{"k":[1,"x",null]}"#)
    );
    assert_eq!(text_of(&json!([1.5])).as_deref(), Some("[1.5]"));
    // JSON null is SQL NULL, not the JSON text `null`, in every column type.
    assert_eq!(text_of(&json!(null)), None);
}

#[test]
fn a_row_is_one_text_value_per_column_in_order() {
    let sink = sink(&[
        ("device", "device", "text"),
        ("temp", "payload.temp", "double precision"),
        ("doc", "payload", "jsonb"),
        ("missing", "payload.nothing", "text"),
        ("tag", "device + '!'", "text"),
    ]);
    let payload = json!({"temp": 21.5, "nothing": null});
    let prepared = sink
        .prepare(&record("id1", payload.clone()))
        .expect("prepare");
    assert_eq!(prepared.refused, None);
    assert_eq!(prepared.id, "id1");
    assert!(prepared.bytes.is_empty());
    let [device, temp, doc, missing, tag] = prepared.values.as_slice() else {
        panic!("five values: {:?}", prepared.values);
    };
    assert_eq!(device.as_deref(), Some("d1"));
    assert_eq!(temp.as_deref(), Some("21.5"));
    let doc = doc.as_deref().expect("doc");
    assert_eq!(serde_json::from_str::<Value>(doc).expect("json"), payload);
    assert_eq!(*missing, None, "a JSON null is SQL NULL");
    assert_eq!(tag.as_deref(), Some("d1!"), "a computed value");
    // The batch is counted by the text it holds.
    assert_eq!(prepared.size(), 2 + 4 + doc.len() + 3);
}

#[test]
fn a_nul_anywhere_refuses_the_message_naming_the_column() {
    let sink = sink(&[
        ("note", "payload.note", "text"),
        ("doc", "payload", "jsonb"),
    ]);
    let nul_text = sink
        .prepare(&record("id1", json!({"note": "a\u{0}b"})))
        .expect("prepare");
    let why = nul_text.refused.expect("refused");
    assert!(why.starts_with("column note: contains U+0000"), "{why}");
    assert!(nul_text.values.is_empty());
    let nul_json = sink
        .prepare(&record("id2", json!({"note": "ok", "k": ["x\u{0}"]})))
        .expect("prepare");
    let why = nul_json.refused.expect("refused");
    assert!(why.starts_with("column doc: contains U+0000"), "{why}");
    let nul_id = sink
        .prepare(&record("id\u{0}", json!({"note": "ok"})))
        .expect("prepare");
    assert!(nul_id
        .refused
        .is_some_and(|why| why.starts_with("column id:")));
}

#[test]
fn the_statement_casts_each_array_to_its_column_type() {
    let names = ["\"id\"".to_string(), "\"at\"".to_string()];
    let types = ["text".to_string(), "timestamp with time zone".to_string()];
    assert_eq!(
        insert_sql("\"s\".\"t\"", &names, &types),
        "INSERT INTO \"s\".\"t\" (\"id\", \"at\") SELECT CAST(v0 AS text), \
         CAST(v1 AS timestamp with time zone) FROM unnest($1::text[], $2::text[]) \
         AS batch(v0, v1) ON CONFLICT DO NOTHING"
    );
}

#[test]
fn the_arrays_are_one_per_column_with_rows_aligned() {
    let item = |id: &str, values: Vec<Option<&str>>| Prepared {
        id: id.into(),
        key: None,
        bytes: Vec::new(),
        values: values.into_iter().map(|v| v.map(String::from)).collect(),
        refused: None,
    };
    let batch = [
        item("a", vec![Some("1"), None]),
        // Fewer values than columns (never made by `prepare`): NULL, not a shifted row.
        item("b", vec![Some("2")]),
        item("c", vec![Some("3"), Some("x")]),
    ];
    assert_eq!(
        column_arrays(&batch, 2),
        vec![
            vec![Some("a"), Some("b"), Some("c")],
            vec![Some("1"), Some("2"), Some("3")],
            vec![None, None, Some("x")],
        ]
    );
}

#[test]
fn nul_in_a_string_is_refused_by_every_column_type() {
    for kind in [ColumnKind::Other, ColumnKind::Jsonb] {
        let why = refusal(kind, &json!("a\u{0}b")).expect("refused");
        assert!(why.contains("U+0000"), "{why}");
    }
    assert_eq!(refusal(ColumnKind::Other, &json!("a\\u0000b")), None);
}

#[test]
fn nul_inside_json_is_refused_only_by_jsonb() {
    let nested = json!({"a": [1, {"b": "x\u{0}"}]});
    let key = json!({"k\u{0}": 1});
    for value in [&nested, &key] {
        assert!(refusal(ColumnKind::Jsonb, value).is_some(), "{value}");
        // text and json store the object with the NUL escaped as \u0000.
        assert_eq!(refusal(ColumnKind::Other, value), None, "{value}");
    }
    // A string in a jsonb column is parsed as JSON by the server.
    let text = json!(r#"{"a":"\u0000"}"#);
    assert!(refusal(ColumnKind::Jsonb, &text).is_some());
    assert_eq!(refusal(ColumnKind::Other, &text), None);
    // An escaped backslash before u0000 is not a NUL.
    assert_eq!(
        refusal(ColumnKind::Jsonb, &json!(r#"{"a":"\\u0000"}"#)),
        None
    );
}

#[test]
fn ordinary_values_are_not_refused() {
    for value in [
        json!(null),
        json!(true),
        json!(21.5),
        json!("plain"),
        json!({"a": ["b", 1, null]}),
        json!("not json {"),
    ] {
        for kind in [ColumnKind::Other, ColumnKind::Jsonb] {
            assert_eq!(refusal(kind, &value), None, "{value}");
        }
    }
}

#[test]
fn integer_columns_refuse_json_that_is_not_an_integer_in_range() {
    let int = ColumnKind::Integer(32);
    for ok in [
        json!(0),
        json!(-7),
        json!(2_147_483_647),
        json!(-2_147_483_648i64),
        json!("12"),
        json!(null),
    ] {
        assert_eq!(refusal(int, &ok), None, "{ok}");
    }
    for bad in [
        json!(21.5),
        json!(3.0),
        json!(true),
        json!([1]),
        json!({"a": 1}),
    ] {
        assert!(refusal(int, &bad).is_some_and(|why| why.contains("not an integer")));
    }
    for bad in [json!(2_147_483_648i64), json!(-2_147_483_649i64)] {
        assert!(
            refusal(int, &bad).is_some_and(|why| why.contains("range")),
            "{bad}"
        );
    }
    let small = ColumnKind::Integer(16);
    assert_eq!(refusal(small, &json!(-32768)), None);
    assert!(refusal(small, &json!(32768)).is_some());
    let big = ColumnKind::Integer(64);
    assert_eq!(refusal(big, &json!(i64::MIN)), None);
    assert_eq!(refusal(big, &json!(i64::MAX)), None);
    assert!(refusal(big, &json!(u64::MAX)).is_some());
}

#[test]
fn column_kind_reads_the_sql_type() {
    assert_eq!(ColumnKind::of(" JSONB "), ColumnKind::Jsonb);
    assert_eq!(ColumnKind::of("BIGINT"), ColumnKind::Integer(64));
    assert_eq!(ColumnKind::of("int4"), ColumnKind::Integer(32));
    assert_eq!(ColumnKind::of("smallint"), ColumnKind::Integer(16));
    for other in [
        "json",
        "text",
        "jsonb[]",
        "double precision",
        "numeric(10,2)",
    ] {
        assert_eq!(ColumnKind::of(other), ColumnKind::Other, "{other}");
    }
}
