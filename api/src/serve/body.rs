//! The two request shapes users already send, validated field by field so every error
//! names its field:
//! - TEI: `{query, texts, truncate, truncation_direction, raw_scores, return_text}`;
//! - Cohere/Jina: `{model?, query, documents: [string | {text}], top_n?,
//!   return_documents?, max_tokens_per_doc?}`.
//!
//! Both take mrank's extensions `config` (`auto` or a sub-structure id) and `deadline_ms`.

use serde_json::Value;

use super::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shape {
    Tei,
    Cohere,
}

#[derive(Debug, Clone)]
pub struct RerankRequest {
    pub shape: Shape,
    pub model: Option<String>,
    pub query: String,
    pub documents: Vec<String>,
    pub top_n: Option<usize>,
    pub return_documents: bool,
    pub raw_scores: bool,
    /// TEI's `truncate: false` refuses over-long inputs instead of cutting them.
    pub truncate: bool,
    pub truncate_left: bool,
    pub max_tokens_per_doc: Option<usize>,
    pub config: Option<String>,
    pub deadline_ms: Option<f64>,
}

pub struct Limits {
    pub max_documents: usize,
}

fn opt_bool(body: &Value, field: &str, default: bool) -> Result<bool, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(ApiError::invalid(
            field,
            "invalid_type",
            format!("`{field}` must be a boolean, got {}", kind(other)),
        )),
    }
}

fn opt_uint(body: &Value, field: &str) -> Result<Option<u64>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            ApiError::invalid(
                field,
                "invalid_type",
                format!("`{field}` must be a positive integer, got {}", kind(v)),
            )
        }),
    }
}

fn opt_string(body: &Value, field: &str) -> Result<Option<String>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ApiError::invalid(
            field,
            "invalid_type",
            format!("`{field}` must be a string, got {}", kind(other)),
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses a body; `shape` is forced on the `/v1` and `/v2` routes, detected on `/rerank`
/// (`texts` → TEI, `documents` → Cohere).
pub fn parse(
    bytes: &[u8],
    forced: Option<Shape>,
    limits: &Limits,
) -> Result<RerankRequest, ApiError> {
    let body: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_json(format!("request body is not valid JSON: {e}")))?;
    if !body.is_object() {
        return Err(ApiError::bad_json(format!(
            "request body must be a JSON object, got {}",
            kind(&body)
        )));
    }
    // A field sent as `null` counts as absent, as everywhere else in the body.
    let present = |field: &str| body.get(field).is_some_and(|v| !v.is_null());
    let shape = match forced {
        Some(s) => s,
        None if present("texts") && present("documents") => {
            return Err(ApiError::invalid(
                "documents",
                "ambiguous_shape",
                "send `texts` (TEI shape) or `documents` (Cohere/Jina shape), not both",
            ))
        }
        None if present("texts") => Shape::Tei,
        None if present("documents") => Shape::Cohere,
        None => {
            return Err(ApiError::invalid(
                "documents",
                "missing_field",
                "missing `texts` (TEI shape) or `documents` (Cohere/Jina shape)",
            ))
        }
    };
    let query = match body.get("query") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::String(_)) => {
            return Err(ApiError::invalid(
                "query",
                "empty_query",
                "`query` is empty",
            ))
        }
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                "query",
                "missing_field",
                "missing `query`",
            ))
        }
        Some(other) => {
            return Err(ApiError::invalid(
                "query",
                "invalid_type",
                format!("`query` must be a string, got {}", kind(other)),
            ))
        }
    };
    let docs_field = if shape == Shape::Tei {
        "texts"
    } else {
        "documents"
    };
    let documents: Vec<String> = match body.get(docs_field) {
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, d)| match d {
                Value::String(s) => Ok(s.clone()),
                Value::Object(o) if shape == Shape::Cohere => match o.get("text") {
                    Some(Value::String(s)) => Ok(s.clone()),
                    _ => Err(ApiError::invalid(
                        &format!("{docs_field}[{i}]"),
                        "invalid_type",
                        format!("`{docs_field}[{i}]` must be a string or an object with a string `text`"),
                    )),
                },
                other => Err(ApiError::invalid(
                    &format!("{docs_field}[{i}]"),
                    "invalid_type",
                    format!("`{docs_field}[{i}]` must be a string, got {}", kind(other)),
                )),
            })
            .collect::<Result<_, _>>()?,
        None | Some(Value::Null) => return Err(ApiError::invalid(docs_field, "missing_field", format!("missing `{docs_field}`"))),
        Some(other) => return Err(ApiError::invalid(docs_field, "invalid_type", format!("`{docs_field}` must be an array, got {}", kind(other)))),
    };
    if documents.is_empty() {
        return Err(ApiError::invalid(
            docs_field,
            "empty_documents",
            format!("`{docs_field}` is empty"),
        ));
    }
    if documents.len() > limits.max_documents {
        return Err(ApiError::invalid(
            docs_field,
            "too_many_documents",
            format!(
                "{} documents in one request; this server takes at most {} (--max-documents)",
                documents.len(),
                limits.max_documents
            ),
        ));
    }
    let top_n = opt_uint(&body, "top_n")?.map(|n| n as usize);
    if let Some(n) = top_n {
        if n == 0 || n > documents.len() {
            return Err(ApiError::invalid(
                "top_n",
                "top_n_out_of_range",
                format!(
                    "`top_n` must be between 1 and the number of documents ({}), got {n}",
                    documents.len()
                ),
            ));
        }
    }
    let max_tokens_per_doc = opt_uint(&body, "max_tokens_per_doc")?.map(|n| n as usize);
    if max_tokens_per_doc == Some(0) {
        return Err(ApiError::invalid(
            "max_tokens_per_doc",
            "out_of_range",
            "`max_tokens_per_doc` must be at least 1",
        ));
    }
    let truncate_left = match opt_string(&body, "truncation_direction")?.as_deref() {
        None | Some("right") | Some("Right") => false,
        Some("left") | Some("Left") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "truncation_direction",
                "invalid_value",
                format!("`truncation_direction` must be \"left\" or \"right\", got {other:?}"),
            ))
        }
    };
    let deadline_ms = match body.get("deadline_ms") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_f64() {
            Some(ms) if ms > 0.0 && ms.is_finite() => Some(ms),
            _ => {
                return Err(ApiError::invalid(
                    "deadline_ms",
                    "out_of_range",
                    "`deadline_ms` must be a positive number of milliseconds",
                ))
            }
        },
    };
    Ok(RerankRequest {
        shape,
        model: opt_string(&body, "model")?,
        query,
        documents,
        top_n,
        return_documents: opt_bool(
            &body,
            if shape == Shape::Tei {
                "return_text"
            } else {
                "return_documents"
            },
            false,
        )?,
        raw_scores: opt_bool(&body, "raw_scores", false)?,
        // TEI refuses over-long inputs unless asked to truncate; Cohere truncates.
        truncate: opt_bool(&body, "truncate", shape == Shape::Cohere)?,
        truncate_left,
        max_tokens_per_doc,
        config: opt_string(&body, "config")?,
        deadline_ms,
    })
}
