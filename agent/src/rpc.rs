//! JSON-RPC pieces shared by the handlers: error codes, the error type and
//! message builders.

use serde_json::{json, Value};

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;
pub const SPAWN_FAILED: i64 = -32010;
pub const NO_SUCH_PROCESS: i64 = -32011;
pub const FS_ERROR: i64 = -32020;
pub const SHUTTING_DOWN: i64 = -32040;

/// An error response body.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError { code, message: message.into(), data: None }
    }

    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    pub fn invalid_params(message: impl std::fmt::Display) -> Self {
        RpcError::new(INVALID_PARAMS, format!("invalid params: {message}"))
    }

    pub fn no_such_process(what: impl std::fmt::Display) -> Self {
        RpcError::new(NO_SUCH_PROCESS, format!("no such process or handle: {what}"))
    }

    pub fn internal(message: impl std::fmt::Display) -> Self {
        RpcError::new(INTERNAL_ERROR, format!("internal error: {message}"))
    }

    pub fn to_json(&self) -> Value {
        let mut e = json!({"code": self.code, "message": self.message});
        if let Some(d) = &self.data {
            e["data"] = d.clone();
        }
        e
    }
}

pub type RpcResult = Result<Value, RpcError>;

/// Response header for request `id` (null id for frame-level errors).
pub fn response(id: Option<u64>, result: &RpcResult) -> Value {
    let id = id.map(Value::from).unwrap_or(Value::Null);
    match result {
        Ok(v) => json!({"jsonrpc": "2.0", "id": id, "result": v}),
        Err(e) => json!({"jsonrpc": "2.0", "id": id, "error": e.to_json()}),
    }
}

/// Notification header.
pub fn notification(method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "method": method, "params": params})
}

/// Deserializes params into `T`, mapping failures to -32602.
pub fn params<T: serde::de::DeserializeOwned>(p: Value) -> Result<T, RpcError> {
    serde_json::from_value(p).map_err(RpcError::invalid_params)
}

/// A valid request id: a non-negative integer below 2^53.
pub fn valid_id(v: &Value) -> Option<u64> {
    v.as_u64().filter(|n| *n < (1u64 << 53))
}
