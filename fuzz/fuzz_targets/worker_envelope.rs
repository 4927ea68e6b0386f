//! The worker's reading of a queued message: any body is either refused as a bad envelope
//! (dead-lettered with that reason) or becomes a record; a valid envelope survives a
//! round trip, and the record keeps the envelope id as its idempotency key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary_contract::envelope::Payload;
use tributary_worker::record::{get_path, parse_envelope, record_of, valid_path};

fuzz_target!(|data: &[u8]| {
    let Ok(envelope) = parse_envelope(data) else {
        return;
    };
    let record = record_of(&envelope);
    assert_eq!(record.id, envelope.id);
    let again = serde_json::to_vec(&envelope).expect("an envelope serializes");
    let reparsed = parse_envelope(&again).expect("a serialized envelope parses");
    // Everything but the payload's numbers is exact (serde_json parses floats to within
    // one ulp unless `float_roundtrip` is on, which this comparison does not depend on).
    assert_eq!(
        (
            &reparsed.id,
            &reparsed.tenant,
            &reparsed.gateway,
            &reparsed.device,
            &reparsed.topic
        ),
        (
            &envelope.id,
            &envelope.tenant,
            &envelope.gateway,
            &envelope.device,
            &envelope.topic
        )
    );
    assert_eq!(
        (reparsed.protocol, &reparsed.received_at),
        (envelope.protocol, &envelope.received_at)
    );
    assert_eq!(reparsed.content_type, envelope.content_type);
    assert_eq!(encoding(&reparsed.payload), encoding(&envelope.payload));
    for path in ["payload", "payload.a.b", "device", ""] {
        if valid_path(path) {
            let _ = get_path(&record.value, path);
        }
    }
});

fn encoding(payload: &Payload) -> &'static str {
    match payload {
        Payload::Json(_) => "json",
        Payload::Base64(_) => "base64",
    }
}
