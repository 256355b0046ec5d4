//! Search filters on document id and metadata.
//!
//! JSON form (all parts optional, all conditions must hold):
//!
//! ```json
//! {
//!   "document_id": "doc-1",                 // or ["doc-1", "doc-2"]
//!   "metadata": {
//!     "lang": "en",                         // equality: string, number or boolean
//!     "tag": {"in": ["a", "b"]},            // any of
//!     "year": {"gte": 2000, "lt": 2010},    // numeric range: gt, gte, lt, lte
//!     "draft": {"ne": true},                // not equal (also true when the key is missing)
//!     "author.name": {"exists": true}       // dotted keys reach into nested objects
//!   }
//! }
//! ```
//!
//! A metadata value that is an array matches when any of its elements does.

use std::collections::HashSet;

use serde_json::Value;

use crate::IndexError;

/// Document metadata: a JSON object.
pub type Metadata = serde_json::Map<String, Value>;

/// How large a filter may be: evaluating it costs its size on every point it is tried on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterLimits {
    /// Metadata conditions in one filter.
    pub max_conditions: usize,
    /// Values in one `in` list or `document_id` list.
    pub max_values: usize,
    /// Parts of a dotted metadata key (`a.b.c` has 3).
    pub max_key_depth: usize,
}

impl Default for FilterLimits {
    fn default() -> Self {
        FilterLimits {
            max_conditions: 64,
            max_values: 1_024,
            max_key_depth: 8,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Only these documents (None: any document).
    pub document_ids: Option<HashSet<String>>,
    pub conditions: Vec<(String, Condition)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Equals(Value),
    NotEquals(Value),
    In(Vec<Value>),
    Range(Range),
    Exists(bool),
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Range {
    pub gt: Option<f64>,
    pub gte: Option<f64>,
    pub lt: Option<f64>,
    pub lte: Option<f64>,
}

impl Range {
    fn contains(&self, x: f64) -> bool {
        self.gt.is_none_or(|b| x > b)
            && self.gte.is_none_or(|b| x >= b)
            && self.lt.is_none_or(|b| x < b)
            && self.lte.is_none_or(|b| x <= b)
    }
}

fn err(msg: impl Into<String>) -> IndexError {
    IndexError::Filter(msg.into())
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn scalar(v: &Value, at: &str) -> Result<Value, IndexError> {
    match v {
        Value::Bool(_) | Value::Number(_) | Value::String(_) => Ok(v.clone()),
        other => Err(err(format!(
            "`{at}`: expected a string, number or boolean, got {}",
            type_name(other)
        ))),
    }
}

fn number(v: &Value, at: &str) -> Result<f64, IndexError> {
    v.as_f64()
        .ok_or_else(|| err(format!("`{at}`: expected a number, got {}", type_name(v))))
}

impl Filter {
    /// Parse and validate the JSON form (see the module docs), within the default
    /// [`FilterLimits`].
    pub fn from_json(value: &Value) -> Result<Filter, IndexError> {
        Self::from_json_limited(value, &FilterLimits::default())
    }

    /// Parse and validate the JSON form, refusing filters larger than `limits`.
    pub fn from_json_limited(value: &Value, limits: &FilterLimits) -> Result<Filter, IndexError> {
        let obj = value.as_object().ok_or_else(|| {
            err(format!(
                "filter must be an object, got {}",
                type_name(value)
            ))
        })?;
        let mut filter = Filter::default();
        for (key, v) in obj {
            match key.as_str() {
                "document_id" | "document_ids" => {
                    let ids = match v {
                        Value::String(s) => vec![s.clone()],
                        Value::Array(items) => items
                            .iter()
                            .map(|i| {
                                i.as_str().map(str::to_owned).ok_or_else(|| {
                                    err(format!("`{key}`: expected strings, got {}", type_name(i)))
                                })
                            })
                            .collect::<Result<_, _>>()?,
                        other => {
                            return Err(err(format!(
                                "`{key}`: expected a string or an array of strings, got {}",
                                type_name(other)
                            )))
                        }
                    };
                    if ids.len() > limits.max_values {
                        return Err(err(format!(
                            "`{key}` lists {} ids; the limit is {}",
                            ids.len(),
                            limits.max_values
                        )));
                    }
                    filter.document_ids = Some(ids.into_iter().collect());
                }
                "metadata" => {
                    let fields = v.as_object().ok_or_else(|| {
                        err(format!(
                            "`metadata`: expected an object, got {}",
                            type_name(v)
                        ))
                    })?;
                    if fields.len() > limits.max_conditions {
                        return Err(err(format!(
                            "`metadata` has {} conditions; the limit is {}",
                            fields.len(),
                            limits.max_conditions
                        )));
                    }
                    for (field, cond) in fields {
                        if field.is_empty() {
                            return Err(err("`metadata`: empty field name"));
                        }
                        let depth = field.split('.').count();
                        if depth > limits.max_key_depth {
                            return Err(err(format!(
                                "`metadata.{field}`: the key has {depth} parts; the limit is {}",
                                limits.max_key_depth
                            )));
                        }
                        let at = format!("metadata.{field}");
                        filter
                            .conditions
                            .push((field.clone(), parse_condition(cond, &at, limits)?));
                    }
                }
                other => {
                    return Err(err(format!(
                        "unknown filter key `{other}` (expected `document_id` or `metadata`)"
                    )))
                }
            }
        }
        Ok(filter)
    }

    pub fn is_empty(&self) -> bool {
        self.document_ids.is_none() && self.conditions.is_empty()
    }

    pub fn matches(&self, doc_id: &str, metadata: &Metadata) -> bool {
        if let Some(ids) = &self.document_ids {
            if !ids.contains(doc_id) {
                return false;
            }
        }
        self.conditions
            .iter()
            .all(|(field, cond)| cond.matches(lookup(metadata, field)))
    }
}

fn parse_condition(v: &Value, at: &str, limits: &FilterLimits) -> Result<Condition, IndexError> {
    match v {
        Value::Bool(_) | Value::Number(_) | Value::String(_) => Ok(Condition::Equals(v.clone())),
        Value::Object(ops) => {
            if ops.is_empty() {
                return Err(err(format!("`{at}`: empty condition")));
            }
            let mut range = Range::default();
            let mut is_range = false;
            let mut single = None;
            for (op, arg) in ops {
                let at_op = format!("{at}.{op}");
                match op.as_str() {
                    "gt" | "gte" | "lt" | "lte" => {
                        let n = number(arg, &at_op)?;
                        match op.as_str() {
                            "gt" => range.gt = Some(n),
                            "gte" => range.gte = Some(n),
                            "lt" => range.lt = Some(n),
                            _ => range.lte = Some(n),
                        }
                        is_range = true;
                    }
                    "eq" => single = Some(Condition::Equals(scalar(arg, &at_op)?)),
                    "ne" => single = Some(Condition::NotEquals(scalar(arg, &at_op)?)),
                    "in" => {
                        let items = arg.as_array().ok_or_else(|| {
                            err(format!("`{at_op}`: expected an array, got {}", type_name(arg)))
                        })?;
                        if items.len() > limits.max_values {
                            return Err(err(format!(
                                "`{at_op}` lists {} values; the limit is {}",
                                items.len(),
                                limits.max_values
                            )));
                        }
                        let values = items
                            .iter()
                            .map(|i| scalar(i, &at_op))
                            .collect::<Result<_, _>>()?;
                        single = Some(Condition::In(values));
                    }
                    "exists" => {
                        let b = arg.as_bool().ok_or_else(|| {
                            err(format!("`{at_op}`: expected a boolean, got {}", type_name(arg)))
                        })?;
                        single = Some(Condition::Exists(b));
                    }
                    other => {
                        return Err(err(format!(
                            "`{at}`: unknown operator `{other}` (expected eq, ne, in, gt, gte, lt, lte or exists)"
                        )))
                    }
                }
            }
            match (is_range, single) {
                (true, None) => Ok(Condition::Range(range)),
                (false, Some(c)) if ops.len() == 1 => Ok(c),
                _ => Err(err(format!(
                    "`{at}`: combine only range operators (gt, gte, lt, lte) in one condition"
                ))),
            }
        }
        other => Err(err(format!(
            "`{at}`: unsupported condition type {} (use a string, number, boolean or an operator object such as {{\"in\": [...]}})",
            type_name(other)
        ))),
    }
}

/// The value at `path`: the key itself, or a dotted path into nested objects.
pub(crate) fn lookup<'a>(metadata: &'a Metadata, path: &str) -> Option<&'a Value> {
    if let Some(v) = metadata.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut cur = metadata.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    Some(cur)
}

fn scalar_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// Call `f` on `value`, or on each element of an array (the values a condition is tried on).
pub(crate) fn any_scalar(value: &Value, f: impl FnMut(&Value)) {
    match value {
        Value::Array(items) => items.iter().for_each(f),
        v => std::iter::once(v).for_each(f),
    }
}

/// True when `value` (or, for an array, any element) satisfies `pred`.
fn any_element(value: &Value, pred: impl Fn(&Value) -> bool) -> bool {
    match value {
        Value::Array(items) => items.iter().any(pred),
        v => pred(v),
    }
}

impl Condition {
    fn matches(&self, value: Option<&Value>) -> bool {
        match (self, value) {
            (Condition::Exists(want), v) => v.is_some_and(|v| !v.is_null()) == *want,
            (Condition::NotEquals(x), Some(v)) => !any_element(v, |e| scalar_eq(e, x)),
            (Condition::NotEquals(_), None) => true,
            (_, None) => false,
            (Condition::Equals(x), Some(v)) => any_element(v, |e| scalar_eq(e, x)),
            (Condition::In(xs), Some(v)) => any_element(v, |e| xs.iter().any(|x| scalar_eq(e, x))),
            (Condition::Range(r), Some(v)) => {
                any_element(v, |e| e.as_f64().is_some_and(|n| r.contains(n)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(v: Value) -> Metadata {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn matches_ids_and_conditions() {
        let f = Filter::from_json(&json!({
            "document_id": ["a", "b"],
            "metadata": {"lang": "en", "year": {"gte": 2000, "lt": 2010}, "tags": {"in": ["x"]}}
        }))
        .unwrap();
        let m = meta(json!({"lang": "en", "year": 2005, "tags": ["y", "x"]}));
        assert!(f.matches("a", &m));
        assert!(!f.matches("c", &m));
        assert!(!f.matches("a", &meta(json!({"lang": "en", "year": 2010, "tags": "x"}))));
        assert!(!f.matches("a", &meta(json!({"lang": "de", "year": 2005, "tags": "x"}))));
        assert!(!f.matches("a", &meta(json!({"year": 2005, "tags": "x"}))));
    }

    #[test]
    fn ne_exists_nested_and_numbers() {
        let f = Filter::from_json(&json!({"metadata": {
            "draft": {"ne": true}, "author.name": {"exists": true}, "n": 1
        }}))
        .unwrap();
        assert!(f.matches("d", &meta(json!({"author": {"name": "x"}, "n": 1.0}))));
        assert!(!f.matches(
            "d",
            &meta(json!({"author": {"name": "x"}, "n": 1, "draft": true}))
        ));
        assert!(!f.matches("d", &meta(json!({"author": {}, "n": 1}))));
    }

    #[test]
    fn rejects_unknown_types_and_operators() {
        for bad in [
            json!([1]),
            json!({"metadata": {"k": null}}),
            json!({"metadata": {"k": [1, 2]}}),
            json!({"metadata": {"k": {"like": "x"}}}),
            json!({"metadata": {"k": {"gt": "x"}}}),
            json!({"metadata": {"k": {"in": [{"a": 1}]}}}),
            json!({"metadata": {"k": {"eq": 1, "in": [1]}}}),
            json!({"metadata": {"k": {}}}),
            json!({"metadata": 3}),
            json!({"document_id": 3}),
            json!({"where": {}}),
        ] {
            let e = Filter::from_json(&bad).unwrap_err();
            assert!(matches!(e, IndexError::Filter(_)), "{bad}: {e}");
        }
        let e = Filter::from_json(&json!({"metadata": {"k": null}})).unwrap_err();
        assert!(e.to_string().contains("metadata.k"), "{e}");
    }

    #[test]
    fn filters_larger_than_the_limits_are_refused() {
        let limits = FilterLimits {
            max_conditions: 2,
            max_values: 3,
            max_key_depth: 2,
        };
        let ok =
            json!({"document_id": ["a", "b", "c"], "metadata": {"a.b": {"in": [1, 2, 3]}, "c": 1}});
        assert!(Filter::from_json_limited(&ok, &limits).is_ok());
        for (bad, says) in [
            (
                json!({"metadata": {"k": {"in": [1, 2, 3, 4]}}}),
                "metadata.k.in` lists 4 values",
            ),
            (json!({"document_id": ["a", "b", "c", "d"]}), "lists 4 ids"),
            (
                json!({"metadata": {"a": 1, "b": 2, "c": 3}}),
                "3 conditions",
            ),
            (json!({"metadata": {"a.b.c": 1}}), "3 parts"),
        ] {
            let e = Filter::from_json_limited(&bad, &limits)
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        // the defaults allow what a person writes by hand, not a megabyte of values
        let many: Vec<u32> = (0..100_000).collect();
        let e = Filter::from_json(&json!({"metadata": {"k": {"in": many}}})).unwrap_err();
        assert!(e.to_string().contains("the limit is 1024"), "{e}");
    }
}
