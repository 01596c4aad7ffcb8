//! Method parameters as Bitrix24 reads them: PHP-bracket query strings and forms
//! (`filter[>ID]=5&select[]=ID&select[]=TITLE`), JSON bodies, case-insensitive keys for the
//! legacy `crm.*` methods, and the `$result[cmd][n][FIELD]` references of `batch`.
use serde_json::{Map, Value};

/// Parses an `application/x-www-form-urlencoded` string with PHP bracket keys into a JSON
/// object. `a[]=x` appends; objects whose keys are exactly `0..n` become arrays (as PHP lists
/// encode).
pub fn parse_php(query: &str) -> Map<String, Value> {
    let mut root = Value::Object(Map::new());
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        let path = split_key(&k);
        if path.is_empty() {
            continue;
        }
        insert(&mut root, &path, Value::String(v.into_owned()));
    }
    match listify(root) {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// `filter[>ID][0]` -> `["filter", ">ID", "0"]`; `select[]` -> `["select", ""]`.
fn split_key(k: &str) -> Vec<String> {
    let Some(open) = k.find('[') else {
        return vec![k.to_owned()];
    };
    let mut out = vec![k[..open].to_owned()];
    let mut rest = &k[open..];
    while let Some(stripped) = rest.strip_prefix('[') {
        match stripped.find(']') {
            Some(close) => {
                out.push(stripped[..close].to_owned());
                rest = &stripped[close + 1..];
            }
            None => {
                // PHP keeps an unclosed bracket as part of the name; good enough to keep it.
                out.push(stripped.to_owned());
                break;
            }
        }
    }
    out
}

fn insert(node: &mut Value, path: &[String], value: Value) {
    let Some((head, rest)) = path.split_first() else {
        *node = value;
        return;
    };
    if !node.is_object() {
        *node = Value::Object(Map::new());
    }
    let Value::Object(map) = node else { return };
    let key = if head.is_empty() {
        // Append: next integer key.
        let n = map
            .keys()
            .filter_map(|k| k.parse::<usize>().ok())
            .map(|n| n + 1)
            .max()
            .unwrap_or(0);
        n.to_string()
    } else {
        head.clone()
    };
    let child = map.entry(key).or_insert(Value::Null);
    if rest.is_empty() {
        *child = value;
    } else {
        insert(child, rest, value);
    }
}

fn listify(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let is_list = !m.is_empty() && (0..m.len()).all(|i| m.contains_key(&i.to_string()));
            if is_list {
                let mut items: Vec<(usize, Value)> = m
                    .into_iter()
                    .filter_map(|(k, v)| k.parse::<usize>().ok().map(|i| (i, listify(v))))
                    .collect();
                items.sort_by_key(|(i, _)| *i);
                Value::Array(items.into_iter().map(|(_, v)| v).collect())
            } else {
                Value::Object(m.into_iter().map(|(k, v)| (k, listify(v))).collect())
            }
        }
        other => other,
    }
}

/// A parameter by name, trying the name as given, lower case and upper case (`crm.*` methods
/// accept `SELECT`, `FILTER`, `ORDER`, `ID`, `FIELDS`).
pub fn param<'a>(p: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    p.get(name)
        .or_else(|| p.get(&name.to_ascii_lowercase()))
        .or_else(|| p.get(&name.to_ascii_uppercase()))
}

/// A parameter as an integer (accepts `5`, `"5"`).
pub fn param_i64(p: &Map<String, Value>, name: &str) -> Option<i64> {
    param(p, name).and_then(as_i64)
}

/// A JSON scalar as an integer.
pub fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        Value::Bool(b) => Some(*b as i64),
        _ => None,
    }
}

/// Values of a list parameter: an array, an object's values (PHP `a[5]=x`), or one scalar.
pub fn list_of(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) => a.iter().collect(),
        Value::Object(m) => m.values().collect(),
        Value::Null => Vec::new(),
        other => vec![other],
    }
}

/// Replaces `$result[key][i][FIELD]` references in every string of `v` with values from
/// `results`. A string that is one whole reference becomes the referenced value (text for a
/// scalar); references inside text are replaced by text. A reference to something missing
/// becomes an empty string (what real portals do is UNCERTAIN in the doc; clients must not rely
/// on it).
pub fn substitute(v: &mut Value, results: &Map<String, Value>) {
    match v {
        Value::String(s) if s.contains("$result[") => {
            if let Some((path, end)) = parse_ref(s, 0)
                && s.starts_with("$result[")
                && end == s.len()
            {
                *v = match lookup(results, &path) {
                    Some(Value::String(x)) => Value::String(x.clone()),
                    Some(Value::Number(n)) => Value::String(n.to_string()),
                    Some(other @ (Value::Array(_) | Value::Object(_))) => other.clone(),
                    Some(Value::Bool(b)) => Value::String(if *b { "1" } else { "" }.into()),
                    _ => Value::String(String::new()),
                };
                return;
            }
            let mut out = String::new();
            let mut i = 0;
            while let Some(pos) = s[i..].find("$result[") {
                let at = i + pos;
                out.push_str(&s[i..at]);
                match parse_ref(s, at) {
                    Some((path, end)) => {
                        out.push_str(
                            &lookup(results, &path)
                                .map(super::state::value_text)
                                .unwrap_or_default(),
                        );
                        i = end;
                    }
                    None => {
                        out.push_str("$result[");
                        i = at + "$result[".len();
                    }
                }
            }
            out.push_str(&s[i..]);
            *s = out;
        }
        Value::Array(a) => a.iter_mut().for_each(|x| substitute(x, results)),
        Value::Object(m) => m.values_mut().for_each(|x| substitute(x, results)),
        _ => {}
    }
}

/// Parses `$result[a][b]...` starting at `at`; returns the bracket path and the end offset.
fn parse_ref(s: &str, at: usize) -> Option<(Vec<String>, usize)> {
    let mut i = at + "$result".len();
    let bytes = s.as_bytes();
    let mut path = Vec::new();
    while bytes.get(i) == Some(&b'[') {
        let close = s[i + 1..].find(']')? + i + 1;
        path.push(s[i + 1..close].to_owned());
        i = close + 1;
    }
    (!path.is_empty()).then_some((path, i))
}

fn lookup<'a>(results: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut cur = results.get(first)?;
    for p in rest {
        cur = match cur {
            Value::Array(a) => a.get(p.parse::<usize>().ok()?)?,
            Value::Object(m) => m.get(p)?,
            _ => return None,
        };
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn php_brackets_nest_and_list() {
        let p = parse_php(
            "filter%5B%3EID%5D=5&select%5B%5D=ID&select%5B%5D=TITLE&order[ID]=ASC&start=-1&f[@ID][0]=1&f[@ID][1]=2",
        );
        assert_eq!(
            Value::Object(p),
            json!({"filter": {">ID": "5"}, "select": ["ID", "TITLE"], "order": {"ID": "ASC"}, "start": "-1", "f": {"@ID": ["1", "2"]}})
        );
    }

    #[test]
    fn references_resolve() {
        let results = json!({"c0": [{"ID": "7"}, {"ID": "9"}]});
        let Value::Object(results) = results else {
            unreachable!()
        };
        let mut v = json!({"filter": {">ID": "$result[c0][1][ID]"}, "x": "id=$result[c0][0][ID];", "m": "$result[c9][0][ID]"});
        substitute(&mut v, &results);
        assert_eq!(v, json!({"filter": {">ID": "9"}, "x": "id=7;", "m": ""}));
    }
}
