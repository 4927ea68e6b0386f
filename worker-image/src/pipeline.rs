//! The declarative pipeline: `filter`, `set` and `drop` steps applied in order.

use serde_json::Value;
use thiserror::Error;
use tributary_contract::worker_config::{PipelineConfig, PipelineStep};

use crate::expr::{CelEnv, Expr, ExprError};
use crate::record::{remove_path, set_path, valid_path};

/// A pipeline that does not compile: names the step (1-based) and what is wrong.
#[derive(Debug, Error)]
#[error("pipeline step {step} ({kind}): {error}")]
pub struct PipelineBuildError {
    /// 1-based step number.
    pub step: usize,
    /// `filter`, `set` or `drop`.
    pub kind: &'static str,
    /// What is wrong (part of the message, so not also a `source`).
    pub error: StepError,
}

/// What is wrong with a step.
#[derive(Debug, Error)]
pub enum StepError {
    /// The CEL expression does not compile.
    #[error(transparent)]
    Expr(#[from] ExprError),
    /// A field path is malformed.
    #[error("`{0}` is not a dotted field path")]
    BadPath(String),
}

/// A message the pipeline could not evaluate (a poison message).
#[derive(Debug, Error, PartialEq)]
#[error("pipeline step {step} ({kind}): {error}")]
pub struct PipelineEvalError {
    /// 1-based step number.
    pub step: usize,
    /// `filter` or `set`.
    pub kind: &'static str,
    /// The evaluation error (part of the message, so not also a `source`).
    pub error: ExprError,
}

enum Step {
    Filter(Expr),
    Set { field: String, expr: Expr },
    Drop(Vec<String>),
}

/// A compiled pipeline.
pub struct Pipeline {
    steps: Vec<Step>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("steps", &self.steps.len())
            .finish()
    }
}

/// What the pipeline made of a message.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Keep the (possibly changed) message.
    Keep(Value),
    /// A filter dropped it at this 1-based step.
    Filtered(usize),
}

impl Pipeline {
    /// Compiles every step; the first invalid step is the error.
    pub fn compile(env: &CelEnv, config: &PipelineConfig) -> Result<Self, PipelineBuildError> {
        let mut steps = Vec::with_capacity(config.steps.len());
        for (index, step) in config.steps.iter().enumerate() {
            let number = index + 1;
            let fail = |kind, error| PipelineBuildError {
                step: number,
                kind,
                error,
            };
            steps.push(match step {
                PipelineStep::Filter(source) => {
                    Step::Filter(env.compile(source).map_err(|e| fail("filter", e.into()))?)
                }
                PipelineStep::Set(set) => {
                    if !valid_path(&set.field) {
                        return Err(fail("set", StepError::BadPath(set.field.clone())));
                    }
                    Step::Set {
                        field: set.field.clone(),
                        expr: env.compile(&set.expr).map_err(|e| fail("set", e.into()))?,
                    }
                }
                PipelineStep::Drop(fields) => {
                    if let Some(bad) = fields.iter().find(|f| !valid_path(f)) {
                        return Err(fail("drop", StepError::BadPath(bad.clone())));
                    }
                    Step::Drop(fields.clone())
                }
            });
        }
        Ok(Self { steps })
    }

    /// Runs the steps on a message.
    pub fn apply(&self, mut message: Value) -> Result<Outcome, PipelineEvalError> {
        for (index, step) in self.steps.iter().enumerate() {
            let number = index + 1;
            match step {
                Step::Filter(expr) => {
                    let keep = expr
                        .eval_bool(&message)
                        .map_err(|error| PipelineEvalError {
                            step: number,
                            kind: "filter",
                            error,
                        })?;
                    if !keep {
                        return Ok(Outcome::Filtered(number));
                    }
                }
                Step::Set { field, expr } => {
                    let value = expr.eval(&message).map_err(|error| PipelineEvalError {
                        step: number,
                        kind: "set",
                        error,
                    })?;
                    set_path(&mut message, field, value);
                }
                Step::Drop(fields) => {
                    for field in fields {
                        remove_path(&mut message, field);
                    }
                }
            }
        }
        Ok(Outcome::Keep(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tributary_contract::worker_config::SetStep;

    fn pipeline(steps: Vec<PipelineStep>) -> Result<Pipeline, PipelineBuildError> {
        Pipeline::compile(&CelEnv::default(), &PipelineConfig { steps })
    }

    fn set(field: &str, expr: &str) -> PipelineStep {
        PipelineStep::Set(SetStep {
            field: field.into(),
            expr: expr.into(),
        })
    }

    #[test]
    fn filter_set_and_drop_apply_in_order() {
        let pipeline = pipeline(vec![
            PipelineStep::Filter("payload.temp > -50.0".into()),
            set("payload.fahrenheit", "payload.temp * 9.0 / 5.0 + 32.0"),
            set("site", "device.startsWith('press') ? 'north' : 'south'"),
            PipelineStep::Drop(vec!["payload.raw".into(), "gateway".into()]),
        ])
        .expect("compile");
        let message =
            json!({"device": "press-7", "gateway": "g", "payload": {"temp": 20.0, "raw": "x"}});
        let Outcome::Keep(out) = pipeline.apply(message).expect("apply") else {
            panic!("filtered");
        };
        assert_eq!(
            out,
            json!({"device": "press-7", "site": "north", "payload": {"temp": 20.0, "fahrenheit": 68.0}})
        );
    }

    #[test]
    fn filter_false_drops_the_message() {
        let pipeline =
            pipeline(vec![PipelineStep::Filter("payload.temp > 100.0".into())]).expect("compile");
        assert_eq!(
            pipeline.apply(json!({"payload": {"temp": 1.5}})),
            Ok(Outcome::Filtered(1))
        );
    }

    #[test]
    fn invalid_expression_names_step_and_position() {
        let error = pipeline(vec![
            PipelineStep::Filter("true".into()),
            set("x", "payload.temp +* 2"),
        ])
        .expect_err("invalid");
        let text = error.to_string();
        assert!(
            text.starts_with("pipeline step 2 (set): invalid CEL expression"),
            "{text}"
        );
        assert!(text.contains(" at 1:"), "{text}");
    }

    #[test]
    fn bad_field_path_is_a_startup_error() {
        let error = pipeline(vec![PipelineStep::Drop(vec!["a..b".into()])]).expect_err("bad");
        assert_eq!(error.step, 1);
        assert_eq!(error.kind, "drop");
    }

    #[test]
    fn unevaluable_message_reports_the_step() {
        let pipeline = pipeline(vec![set("f", "payload.temp * 2.0")]).expect("compile");
        let error = pipeline
            .apply(json!({"payload": {"humidity": 3}}))
            .expect_err("poison");
        assert_eq!(error.step, 1);
        assert!(
            error.to_string().contains("pipeline step 1 (set)"),
            "{error}"
        );
    }
}
