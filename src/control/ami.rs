//! The avr-ami call-control routes (AVR's HTTP API on port 6006), so AVR
//! provider tools ("transfer to a human", "hang up") work unchanged against
//! agentline: point their `AMI_URL` at agentline's API address.
//!
//! JSON bodies; answers `{"message": ...}` with 200, 404 (unknown uuid),
//! 400 (bad request) or 500.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::ApiState;
use crate::calls::CallCommand;

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/transfer", post(transfer))
        .route("/hangup", post(hangup))
        .route("/originate", post(originate))
        .route("/variables", post(variables))
        .route("/setvar", post(setvar))
}

type Reply = (StatusCode, Json<Value>);

fn msg(code: StatusCode, m: impl Into<Value>) -> Reply {
    (code, Json(json!({"message": m.into()})))
}

fn body(b: Result<Json<Value>, axum::extract::rejection::JsonRejection>) -> Result<Value, Reply> {
    b.map(|Json(v)| v).map_err(|e| {
        msg(
            StatusCode::BAD_REQUEST,
            format!("expected a JSON object: {e}"),
        )
    })
}

fn str_field<'a>(v: &'a Value, k: &str) -> Result<&'a str, Reply> {
    v[k].as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| msg(StatusCode::BAD_REQUEST, format!("missing `{k}`")))
}

/// The active call a request's `uuid` names.
fn call_id(s: &ApiState, v: &Value) -> Result<String, Reply> {
    let uuid = str_field(v, "uuid")?;
    s.sip
        .shared
        .calls
        .find_uuid(uuid)
        .ok_or_else(|| msg(StatusCode::NOT_FOUND, format!("no call with uuid {uuid}")))
}

/// `{"uuid","exten","context","priority"}`: blind transfer to `exten`
/// (a number through the call's trunk, or a `sip:` URI).
async fn transfer(
    State(s): State<ApiState>,
    b: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Reply, Reply> {
    let v = body(b)?;
    let id = call_id(&s, &v)?;
    let exten = str_field(&v, "exten")?;
    let trunk = s.sip.shared.calls.get(&id).and_then(|c| c.trunk);
    let req = crate::sip::call::transfer_target(&s.sip.shared, trunk.as_deref(), exten)
        .map_err(|e| msg(StatusCode::BAD_REQUEST, e.to_string()))?;
    if s.sip.shared.calls.command(&id, CallCommand::Transfer(req)) {
        Ok(msg(StatusCode::OK, "Transfer initiated"))
    } else {
        Err(msg(StatusCode::NOT_FOUND, "call ended"))
    }
}

/// `{"uuid"}`: hang the call up.
async fn hangup(
    State(s): State<ApiState>,
    b: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Reply, Reply> {
    let v = body(b)?;
    let id = call_id(&s, &v)?;
    s.sip.shared.calls.hangup(&id);
    Ok(msg(StatusCode::OK, "Call hung up"))
}

/// `{"uuid"}`: the call's variables (ours plus those set with /setvar).
async fn variables(
    State(s): State<ApiState>,
    b: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Reply, Reply> {
    let v = body(b)?;
    let id = call_id(&s, &v)?;
    let c = s
        .sip
        .shared
        .calls
        .get(&id)
        .ok_or_else(|| msg(StatusCode::NOT_FOUND, "call ended"))?;
    let mut vars = serde_json::Map::new();
    vars.insert("uuid".into(), json!(c.uuid));
    vars.insert("from".into(), json!(c.from));
    vars.insert("to".into(), json!(c.to));
    vars.insert("call_id".into(), json!(c.call_id));
    vars.insert("route".into(), json!(c.route));
    for (k, val) in &c.variables {
        vars.insert(k.clone(), json!(val));
    }
    Ok(msg(StatusCode::OK, Value::Object(vars)))
}

/// `{"uuid","name","value"}`: set a call variable.
async fn setvar(
    State(s): State<ApiState>,
    b: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Reply, Reply> {
    let v = body(b)?;
    let id = call_id(&s, &v)?;
    let name = str_field(&v, "name")?.to_string();
    let value = match &v["value"] {
        Value::String(x) => x.clone(),
        Value::Null => return Err(msg(StatusCode::BAD_REQUEST, "missing `value`")),
        other => other.to_string(),
    };
    s.sip.shared.calls.update(&id, |c| {
        c.variables.insert(name, value);
    });
    Ok(msg(StatusCode::OK, "Variable set"))
}

/// `{"channel","exten","context","priority","callerid"}`: an outbound call.
/// `channel` names the number and trunk as `PJSIP/<number>@<trunk>`,
/// `SIP/<trunk>/<number>` or `<trunk>/<number>`; `exten` is the route
/// (`dial`) whose agent (with its fallbacks and options) takes the call
/// once answered. Only the profile's routes: no agent from the request.
async fn originate(
    State(s): State<ApiState>,
    b: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Reply, Reply> {
    let v = body(b)?;
    if v.get("agent").is_some() {
        return Err(msg(
            StatusCode::BAD_REQUEST,
            "`agent` is not accepted: `exten` names the profile's route whose agent takes the call",
        ));
    }
    let channel = str_field(&v, "channel")?;
    let exten = str_field(&v, "exten")?;
    let (trunk, number) = parse_channel(channel).ok_or_else(|| {
        msg(
            StatusCode::BAD_REQUEST,
            "channel: expected PJSIP/<number>@<trunk>, SIP/<trunk>/<number> or <trunk>/<number>",
        )
    })?;
    let cfg = s.sip.shared.cfg();
    let route = cfg
        .route(exten)
        .ok_or_else(|| msg(StatusCode::NOT_FOUND, format!("no route `{exten}`")))?;
    let caller = v["callerid"].as_str().map(|c| {
        // `"Name" <1234>` or `1234`: keep the number.
        c.rsplit_once('<')
            .map(|(_, r)| r.trim_end_matches('>').to_string())
            .unwrap_or_else(|| c.to_string())
    });
    let req = crate::sip::call::Originate {
        trunk,
        to: number,
        from: caller,
        route: route.clone(),
        ring_timeout_s: None,
    };
    match crate::sip::call::originate(s.sip.shared.clone(), req) {
        Ok(id) => Ok((
            StatusCode::OK,
            Json(json!({"message": "Originate successful", "id": id})),
        )),
        Err(e) => Err(msg(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

fn parse_channel(c: &str) -> Option<(String, String)> {
    let rest = c
        .strip_prefix("PJSIP/")
        .or_else(|| c.strip_prefix("SIP/"))
        .unwrap_or(c);
    if let Some((number, trunk)) = rest.split_once('@') {
        return Some((trunk.to_string(), number.to_string()));
    }
    let (trunk, number) = rest.split_once('/')?;
    (!trunk.is_empty() && !number.is_empty()).then(|| (trunk.to_string(), number.to_string()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn channels_name_trunk_and_number() {
        let p = |c| super::parse_channel(c);
        assert_eq!(
            p("PJSIP/+4144555@carrier"),
            Some(("carrier".into(), "+4144555".into()))
        );
        assert_eq!(
            p("SIP/carrier/1234"),
            Some(("carrier".into(), "1234".into()))
        );
        assert_eq!(p("carrier/1234"), Some(("carrier".into(), "1234".into())));
        assert_eq!(p("1234"), None);
    }
}
