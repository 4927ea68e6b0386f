//! The data endpoints: devices, latest values, history pages and time buckets.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::backlog::Backlog;
use crate::http::{ApiError, AppState, Caller};
use crate::keys::Scope;
use crate::query::{self, Cursor, Field};
use crate::roster::{self, StoredDevice};
use crate::sql::DeviceFilter;

type Params = HashMap<String, String>;

/// Refuses parameters an endpoint does not know (a typo such as `form=` would otherwise
/// silently widen the answer).
fn only(params: &Params, known: &[&str]) -> Result<(), ApiError> {
    let mut unknown: Vec<&str> = params
        .keys()
        .map(String::as_str)
        .filter(|name| !known.contains(name))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    unknown.sort_unstable();
    Err(ApiError::new(
        StatusCode::BAD_REQUEST,
        format!(
            "unknown query parameter(s): {}; known: {}",
            unknown.join(", "),
            known.join(", ")
        ),
    ))
}

fn scope_filter(scope: &Scope) -> DeviceFilter {
    match scope {
        Scope::All => DeviceFilter::All,
        Scope::Devices(list) => DeviceFilter::Devices(list.clone()),
        Scope::Prefix(prefix) => DeviceFilter::Prefix(prefix.clone()),
    }
}

fn parse_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// `GET /v1/devices`: the key's devices, registered (Device resources) or seen in the
/// table, with their status, last time and row count.
pub async fn devices(
    State(state): State<AppState>,
    Caller(key): Caller,
    Query(params): Query<Params>,
) -> Result<Json<Value>, ApiError> {
    only(&params, &["limit"])?;
    let limit = query::parse_limit(
        params.get("limit").map(String::as_str),
        state.limits.max_page_size,
        state.limits.max_page_size,
    )?;
    let statement = state.table.devices(&scope_filter(&key.scope), limit);
    let rows = state.postgres.query(&statement).await?;
    let stored: Vec<StoredDevice> = rows
        .iter()
        .map(|row| StoredDevice {
            device: row.get(0),
            last_seen: row.get(1),
            messages: row.get(2),
        })
        .collect();
    let roster = state.roster.get();
    let devices = roster::merge(&stored, &roster, &key.scope, limit as usize);
    Ok(Json(
        json!({ "devices": devices, "rosterOmitted": roster.omitted }),
    ))
}

/// `GET /v1/backlog`: the pipeline queue's depth, as last read (every few seconds).
pub async fn backlog(
    State(state): State<AppState>,
    Caller(_): Caller,
    Query(params): Query<Params>,
) -> Result<Json<Value>, ApiError> {
    only(&params, &[])?;
    let Some(backlog) = &state.backlog else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no backlog: the API reads no live Queue",
        ));
    };
    match backlog.current() {
        Some(reading) => Ok(Json(Backlog::answer(&reading))),
        None => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the depth of queue {:?} is not known yet", backlog.queue()),
        )),
    }
}

/// `GET /v1/devices/{id}/latest`: from Redis when configured, else the newest row.
pub async fn latest(
    State(state): State<AppState>,
    Caller(key): Caller,
    Path(device): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !key.scope.allows(&device) {
        return Err(ApiError::no_device());
    }
    if let Some(redis) = &state.redis {
        let (value, id) = redis
            .latest(&device)
            .await?
            .ok_or_else(ApiError::no_device)?;
        return Ok(Json(json!({
            "device": device, "source": "redis", "id": id, "value": value,
        })));
    }
    let rows = state.postgres.query(&state.table.latest(&device)).await?;
    let row = rows.first().ok_or_else(ApiError::no_device)?;
    Ok(Json(json!({
        "device": device,
        "source": "postgres",
        "id": row.get::<_, Option<String>>(1),
        "value": parse_json(&row.get::<_, String>(0)),
    })))
}

const HISTORY_PARAMS: [&str; 7] = ["from", "to", "limit", "cursor", "order", "bucket", "field"];

/// `GET /v1/devices/{id}/history`: one device's rows or buckets.
pub async fn device_history(
    State(state): State<AppState>,
    Caller(key): Caller,
    Path(device): Path<String>,
    Query(params): Query<Params>,
) -> Result<Json<Value>, ApiError> {
    only(&params, &HISTORY_PARAMS)?;
    if !key.scope.allows(&device) {
        return Err(ApiError::no_device());
    }
    history(&state, DeviceFilter::Devices(vec![device]), &params).await
}

/// `GET /v1/history`: rows or buckets of a group: `devices=a,b`, `devicePrefix=p`, or
/// every device of the key.
pub async fn group_history(
    State(state): State<AppState>,
    Caller(key): Caller,
    Query(params): Query<Params>,
) -> Result<Json<Value>, ApiError> {
    let mut known = HISTORY_PARAMS.to_vec();
    known.extend(["devices", "devicePrefix"]);
    only(&params, &known)?;
    let forbidden = |what: String| ApiError::new(StatusCode::FORBIDDEN, what);
    let filter = match (params.get("devices"), params.get("devicePrefix")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "give `devices` or `devicePrefix`, not both",
            ))
        }
        (Some(list), None) => {
            let devices = query::parse_devices(list, state.limits.max_devices_per_query)?;
            if let Some(other) = devices.iter().find(|d| !key.scope.allows(d)) {
                return Err(forbidden(format!("this key may not read device `{other}`")));
            }
            DeviceFilter::Devices(devices)
        }
        (None, Some(prefix)) => {
            if !key.scope.covers_prefix(prefix) {
                return Err(forbidden(format!(
                    "this key may not read every device starting with `{prefix}`"
                )));
            }
            DeviceFilter::Prefix(prefix.clone())
        }
        (None, None) => scope_filter(&key.scope),
    };
    history(&state, filter, &params).await
}

async fn history(
    state: &AppState,
    filter: DeviceFilter,
    params: &Params,
) -> Result<Json<Value>, ApiError> {
    let get = |name: &str| params.get(name).map(String::as_str);
    let from = get("from")
        .map(|t| query::parse_time("from", t))
        .transpose()?;
    let to = get("to").map(|t| query::parse_time("to", t)).transpose()?;
    if let (Some(from), Some(to)) = (&from, &to) {
        if query::seconds_between(from, to).is_some_and(|s| s < 0) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "`from` is after `to`",
            ));
        }
    }
    match (get("bucket"), get("field")) {
        (Some(bucket), Some(field)) => {
            for name in ["limit", "cursor", "order"] {
                if params.contains_key(name) {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("`{name}` does not apply to buckets"),
                    ));
                }
            }
            bucket_history(state, &filter, bucket, field, from, to).await
        }
        (Some(_), None) | (None, Some(_)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "`bucket` and `field` go together",
        )),
        (None, None) => page_history(state, &filter, params, from, to).await,
    }
}

/// History in time buckets of one numeric field.
async fn bucket_history(
    state: &AppState,
    filter: &DeviceFilter,
    bucket: &str,
    field: &str,
    from: Option<String>,
    to: Option<String>,
) -> Result<Json<Value>, ApiError> {
    let seconds = query::parse_interval(bucket)?;
    let field_spec = Field::parse(field)?;
    let (Some(from), Some(to)) = (from, to) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "buckets need both `from` and `to`",
        ));
    };
    let span = query::seconds_between(&from, &to).unwrap_or(0).max(0) as u64;
    let count = span.div_ceil(seconds);
    if count > state.limits.max_buckets {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "{count} buckets asked for; at most {} (widen `bucket` or narrow the range)",
                state.limits.max_buckets
            ),
        ));
    }
    let statement = state
        .table
        .buckets(filter, &from, &to, seconds, &field_spec);
    let rows = state.postgres.query(&statement).await?;
    let buckets: Vec<Value> = rows
        .iter()
        .map(|row| {
            json!({
                "start": row.get::<_, String>(0),
                "count": row.get::<_, i64>(1),
                "avg": row.get::<_, Option<f64>>(2),
                "min": row.get::<_, Option<f64>>(3),
                "max": row.get::<_, Option<f64>>(4),
                "rows": row.get::<_, i64>(5),
            })
        })
        .collect();
    Ok(Json(json!({
        "bucket": bucket,
        "bucketSeconds": seconds,
        "field": field,
        "from": from,
        "to": to,
        "buckets": buckets,
    })))
}

/// History as pages of raw messages, with a cursor to the next page.
async fn page_history(
    state: &AppState,
    filter: &DeviceFilter,
    params: &Params,
    from: Option<String>,
    to: Option<String>,
) -> Result<Json<Value>, ApiError> {
    let get = |name: &str| params.get(name).map(String::as_str);
    let limit = query::parse_limit(
        get("limit"),
        state.limits.default_page_size,
        state.limits.max_page_size,
    )?;
    let cursor = get("cursor").map(Cursor::decode).transpose()?;
    let order = query::parse_order(get("order"))?;
    let statement = state.table.history(
        filter,
        from.as_deref(),
        to.as_deref(),
        cursor.as_ref(),
        order,
        limit,
    );
    let rows = state.postgres.query(&statement).await?;
    let more = rows.len() > limit as usize;
    let page = &rows[..rows.len().min(limit as usize)];
    let next = match page.last() {
        Some(last) if more => Some(
            Cursor {
                time: last.get(1),
                id: last.get(2),
            }
            .encode(),
        ),
        _ => None,
    };
    let items: Vec<Value> = page
        .iter()
        .map(|row| parse_json(&row.get::<_, String>(0)))
        .collect();
    Ok(Json(json!({ "items": items, "nextCursor": next })))
}
