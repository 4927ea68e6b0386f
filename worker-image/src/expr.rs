//! CEL expressions over a message: compiled once at start, evaluated per message.

use std::collections::HashMap;
use std::sync::Arc;

use cel::objects::Key;
use cel::{Context, Env, Program, Value as CelValue};
use serde_json::Value;
use thiserror::Error;
use tributary_contract::cel_bounds::{self, MAX_VALUE_BYTES};

/// CEL errors.
#[derive(Debug, Error, PartialEq)]
pub enum ExprError {
    /// The expression does not compile; `position` is `line:column` in the expression.
    #[error("invalid CEL expression `{expr}` at {position}: {message}")]
    Compile {
        /// The expression text.
        expr: String,
        /// `line:column` of the first error.
        position: String,
        /// What the parser said.
        message: String,
    },
    /// The expression is past a bound of [`tributary_contract::cel_bounds`] (too long, too
    /// deeply nested comprehensions); `expr` is its beginning.
    #[error("CEL expression `{expr}` refused: {message}")]
    TooComplex {
        /// The first characters of the expression.
        expr: String,
        /// Which bound, by how much.
        message: String,
    },
    /// The expression failed on this message (missing field, wrong type, a value past
    /// [`MAX_VALUE_BYTES`], ...).
    #[error("CEL evaluation of `{expr}` failed: {message}")]
    Eval {
        /// The expression text.
        expr: String,
        /// What the interpreter said.
        message: String,
    },
}

/// The shared CEL environment (standard library).
#[derive(Clone)]
pub struct CelEnv {
    env: Arc<Env>,
}

impl Default for CelEnv {
    fn default() -> Self {
        Self {
            env: Arc::new(Env::stdlib()),
        }
    }
}

impl std::fmt::Debug for CelEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CelEnv")
    }
}

/// A message converted to CEL variables once, for evaluating several expressions on it.
pub struct Scope {
    context: Context<'static, 'static>,
}

impl Scope {
    fn new(env: &Arc<Env>, message: &Value) -> Self {
        let mut context = Context::with_env(env.clone());
        let whole = to_cel(message);
        if let CelValue::Map(map) = &whole {
            // Field values are shared with `message` (CEL values are reference-counted).
            for (key, value) in map.map.iter() {
                if let Key::String(name) = key {
                    context.add_variable_from_value(name.as_str(), value.clone());
                }
            }
        }
        context.add_variable_from_value("message", whole);
        Self { context }
    }
}

impl CelEnv {
    /// A scope for evaluating expressions of this environment on one message.
    pub fn scope(&self, message: &Value) -> Scope {
        Scope::new(&self.env, message)
    }
}

/// A compiled CEL expression.
pub struct Expr {
    source: String,
    program: Program,
    env: Arc<Env>,
    /// The field path, when the expression is nothing more (see [`crate::field_path`]).
    path: Option<Vec<String>>,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expr")
            .field("source", &self.source)
            .finish()
    }
}

impl CelEnv {
    /// Compiles an expression within the bounds of [`cel_bounds::check`]; errors carry the
    /// position.
    pub fn compile(&self, source: &str) -> Result<Expr, ExprError> {
        cel_bounds::check(source).map_err(|message| ExprError::TooComplex {
            expr: source.chars().take(60).collect::<String>() + "...",
            message,
        })?;
        let program = self.env.compile(source).map_err(|errors| {
            let (position, message) = match errors.errors.first() {
                Some(first) => (
                    format!("{}:{}", first.pos.0, first.pos.1),
                    first.msg.clone(),
                ),
                None => ("1:0".to_string(), errors.to_string()),
            };
            ExprError::Compile {
                expr: source.to_string(),
                position,
                message,
            }
        })?;
        Ok(Expr {
            source: source.to_string(),
            program,
            env: self.env.clone(),
            path: crate::field_path::plain_path(source),
        })
    }
}

impl Expr {
    /// The expression text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates over a message: each top-level field is a variable, the whole message is
    /// `message`. To evaluate several expressions on one message, build a [`Scope`] once.
    pub fn eval(&self, message: &Value) -> Result<Value, ExprError> {
        self.eval_in(&Scope::new(&self.env, message))
    }

    /// The value without CEL when the expression is a plain field path and the field is
    /// there (the same value CEL gives); None when CEL must evaluate it.
    pub fn lookup<'a>(&self, message: &'a Value) -> Option<&'a Value> {
        crate::field_path::lookup(message, self.path.as_deref()?, MAX_VALUE_BYTES)
    }

    /// Evaluates in a prepared scope.
    pub fn eval_in(&self, scope: &Scope) -> Result<Value, ExprError> {
        let result = self
            .program
            .execute(&scope.context)
            .map_err(|e| self.eval_error(e.to_string()))?;
        if size_within(&result, MAX_VALUE_BYTES).is_none() {
            return Err(self.eval_error(format!(
                "the value built is larger than the {MAX_VALUE_BYTES} bytes allowed"
            )));
        }
        to_json(&result).map_err(|message| self.eval_error(message))
    }

    /// Evaluates to a bool, or fails.
    pub fn eval_bool(&self, message: &Value) -> Result<bool, ExprError> {
        match self.eval(message)? {
            Value::Bool(b) => Ok(b),
            other => Err(self.eval_error(format!("expected a bool, got {other}"))),
        }
    }

    fn eval_error(&self, message: String) -> ExprError {
        ExprError::Eval {
            expr: self.source.clone(),
            message,
        }
    }
}

/// The size of `value` (strings and bytes by length, every other item 8 bytes, plus map
/// keys), or None as soon as it passes `limit` (the walk stops there).
pub fn size_within(value: &CelValue, limit: usize) -> Option<usize> {
    let size = match value {
        CelValue::String(s) => s.len(),
        CelValue::Bytes(b) => b.len(),
        CelValue::List(items) => {
            let mut total = 8;
            for item in items.iter() {
                total += size_within(item, limit.checked_sub(total)?)?;
            }
            total
        }
        CelValue::Map(map) => {
            let mut total = 8;
            for (key, item) in map.map.iter() {
                let key_size = match key {
                    Key::String(s) => s.len(),
                    _ => 8,
                };
                total += key_size + size_within(item, limit.checked_sub(total + key_size)?)?;
            }
            total
        }
        _ => 8,
    };
    (size <= limit).then_some(size)
}

/// JSON to CEL: integers become `int` when they fit (so `payload.count > 5` works), else
/// `uint`; other numbers `double`.
pub fn to_cel(value: &Value) -> CelValue {
    match value {
        Value::Null => CelValue::Null,
        Value::Bool(b) => CelValue::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                CelValue::Int(i)
            } else if let Some(u) = n.as_u64() {
                CelValue::UInt(u)
            } else {
                CelValue::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => CelValue::String(Arc::new(s.clone())),
        Value::Array(items) => CelValue::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(fields) => {
            let map: HashMap<Key, CelValue> = fields
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), to_cel(v)))
                .collect();
            CelValue::from(map)
        }
    }
}

/// CEL to JSON; timestamps become RFC 3339 text, durations nanoseconds.
pub fn to_json(value: &CelValue) -> Result<Value, String> {
    if let CelValue::Float(f) = value {
        if !f.is_finite() {
            return Err(format!("{f} is not a JSON number"));
        }
    }
    value.json().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval(source: &str, message: Value) -> Result<Value, ExprError> {
        CelEnv::default()
            .compile(source)
            .expect("compile")
            .eval(&message)
    }

    #[test]
    fn fields_are_variables_and_message_is_the_whole() {
        let message = json!({"device": "d1", "payload": {"temp": 21.5, "count": 3}});
        assert_eq!(eval("device + '-x'", message.clone()), Ok(json!("d1-x")));
        assert_eq!(eval("payload.count > 2", message.clone()), Ok(json!(true)));
        assert_eq!(eval("message.payload.temp * 2.0", message), Ok(json!(43.0)));
    }

    #[test]
    fn compile_error_names_the_position() {
        let error = CelEnv::default()
            .compile("payload.temp >")
            .expect_err("invalid");
        let ExprError::Compile { position, .. } = &error else {
            panic!("{error:?}");
        };
        assert!(position.starts_with("1:"), "{error}");
    }

    #[test]
    fn missing_field_is_an_evaluation_error() {
        let result = eval("payload.temp > 1.0", json!({"payload": {"other": 1}}));
        assert!(matches!(result, Err(ExprError::Eval { .. })), "{result:?}");
    }

    #[test]
    fn a_value_built_past_the_limit_is_an_evaluation_error() {
        let message = json!({"s": "a".repeat(1000), "items": (0..1000).collect::<Vec<_>>()});
        let result = eval("items.map(i, s + s)", message.clone());
        let Err(ExprError::Eval { message: why, .. }) = result else {
            panic!("{result:?}");
        };
        assert!(
            why.contains("larger than the 1048576 bytes allowed"),
            "{why}"
        );
        // Below the limit the same expression evaluates.
        let small = json!({"s": "ab", "items": [1, 2]});
        assert_eq!(
            eval("items.map(i, s + s)", small),
            Ok(json!(["abab", "abab"]))
        );
    }

    #[test]
    fn an_over_long_expression_is_refused_at_compile() {
        let source = format!("payload.v + {}", "1 + ".repeat(1100) + "1");
        let error = CelEnv::default().compile(&source).expect_err("too long");
        assert!(matches!(error, ExprError::TooComplex { .. }), "{error}");
        assert!(error.to_string().contains("bytes long"), "{error}");
    }

    #[test]
    fn sizes_stop_counting_at_the_limit() {
        let big = to_cel(&json!(["abcd", {"key": "value"}]));
        assert_eq!(size_within(&big, 1000), Some(8 + 4 + 8 + 3 + 5));
        assert_eq!(size_within(&big, 10), None);
    }

    #[test]
    fn non_bool_filter_result_is_an_error() {
        let expr = CelEnv::default().compile("1 + 1").expect("compile");
        assert!(expr.eval_bool(&json!({})).is_err());
    }
}
