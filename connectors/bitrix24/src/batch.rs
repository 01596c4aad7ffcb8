//! `batch` requests: up to 50 commands `method?query` in one HTTP request (one hit of the
//! leaky bucket).
//!
//! Commands are keyed `c00`, `c01`, ... (zero-padded, so key order is command order however a
//! server sorts them). Their parameters are PHP `http_build_query` strings
//! (`filter[>ID]=5&select[0]=ID`); a value may be a `$result[c03][49][ID]` reference to an earlier
//! command's answer, which the portal substitutes before running the command. That is how
//! [`chain_list`] pages by id inside one request: command *i* asks for rows with
//! `ID > $result[c{i-1}][49][ID]` (the last row of the previous command), ordered by `ID`, with
//! `start=-1` so the portal never counts the table.
use serde_json::Value;

/// One command of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Key (`c00`).
    pub key: String,
    /// The method.
    pub method: String,
    /// `method?query` as the portal reads it.
    pub line: String,
}

/// The key of command `i`.
pub fn key(i: usize) -> String {
    format!("c{i:02}")
}

/// Encodes parameters like PHP's `http_build_query` (`a[b][0]=x`).
pub fn php_query(params: &Value) -> String {
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    fn walk(prefix: &str, v: &Value, out: &mut url::form_urlencoded::Serializer<'_, String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let name = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}[{k}]")
                    };
                    walk(&name, v, out);
                }
            }
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    walk(&format!("{prefix}[{i}]"), v, out);
                }
            }
            Value::Null => {
                out.append_pair(prefix, "");
            }
            Value::String(s) => {
                out.append_pair(prefix, s);
            }
            Value::Bool(b) => {
                out.append_pair(prefix, if *b { "Y" } else { "N" });
            }
            Value::Number(n) => {
                out.append_pair(prefix, &n.to_string());
            }
        }
    }
    walk("", params, &mut out);
    out.finish()
}

/// A command `method?php_query(params)`.
pub fn command(i: usize, method: &str, params: &Value) -> Command {
    Command {
        key: key(i),
        method: method.to_owned(),
        line: format!("{method}?{}", php_query(params)),
    }
}

/// `n` chained list commands of `method` after id `after`: ordered by `ID`, `start=-1`, each
/// starting after the last row (`[49]`, the 50th) of the previous one. `filter` holds extra
/// conditions (`>=DATE_MODIFY`, a segment's `<ID`); `select` the fields. With `count_last` the
/// last command asks `start=0` instead, so its `total` tells how many rows the filter still
/// holds after the chain (one count over a bounded id range, for segments).
pub fn chain_list(
    method: &str,
    after: u64,
    n: usize,
    select: &[&str],
    filter: &serde_json::Map<String, Value>,
    count_last: bool,
) -> Vec<Command> {
    let n = n.max(1);
    (0..n)
        .map(|i| {
            let from = if i == 0 {
                Value::String(after.to_string())
            } else {
                Value::String(format!("$result[{}][49][ID]", key(i - 1)))
            };
            let mut f = filter.clone();
            f.insert(">ID".into(), from);
            let start = if count_last && i + 1 == n { 0 } else { -1 };
            let params = serde_json::json!({
                "order": {"ID": "ASC"},
                "filter": f,
                "select": select,
                "start": start,
            });
            command(i, method, &params)
        })
        .collect()
}

/// Up to `n` chained `crm.item.productrow.list` calls of deal rows (`ownerType` `D`) after row
/// `after` (and below row `upto`, when given), ordered by `id`: like [`chain_list`], but this
/// method answers `{"productRows": [...]}` with camelCase fields, so the reference reaches one
/// level deeper. With `count_last` the last command counts (`start=0`), as in [`chain_list`].
pub fn chain_product_rows(
    after: u64,
    upto: Option<u64>,
    count_last: bool,
    n: usize,
) -> Vec<Command> {
    let n = n.max(1);
    (0..n)
        .map(|i| {
            let from = if i == 0 {
                Value::String(after.to_string())
            } else {
                Value::String(format!("$result[{}][productRows][49][id]", key(i - 1)))
            };
            let mut filter = serde_json::json!({"=ownerType": "D", ">id": from});
            if let Some(u) = upto {
                filter["<id"] = Value::String(u.to_string());
            }
            let start = if count_last && i + 1 == n { 0 } else { -1 };
            let params = serde_json::json!({
                "filter": filter,
                "order": {"id": "ASC"},
                "start": start,
            });
            command(i, "crm.item.productrow.list", &params)
        })
        .collect()
}

/// The JSON body of a batch request.
pub fn body(commands: &[Command], halt: bool) -> Value {
    let cmd: serde_json::Map<String, Value> = commands
        .iter()
        .map(|c| (c.key.clone(), Value::String(c.line.clone())))
        .collect();
    serde_json::json!({"halt": halt as u8, "cmd": cmd})
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn php_query_nests_like_http_build_query() {
        let q = php_query(&json!({"filter": {">ID": "5"}, "select": ["ID", "TITLE"], "start": -1}));
        assert_eq!(
            q,
            "filter%5B%3EID%5D=5&select%5B0%5D=ID&select%5B1%5D=TITLE&start=-1"
        );
    }

    #[test]
    fn body_sends_commands_in_insertion_order() {
        let commands: Vec<Command> = ["deal", "contact", "10", "2"]
            .iter()
            .map(|k| Command {
                key: (*k).to_owned(),
                method: "user.get".to_owned(),
                line: format!("user.get?k={k}"),
            })
            .collect();
        let text = serde_json::to_string(&body(&commands, false)).unwrap();
        let at = |k: &str| text.find(&format!("\"{k}\":")).unwrap();
        assert!(at("deal") < at("contact") && at("contact") < at("10") && at("10") < at("2"));
    }

    #[test]
    fn chains_reference_the_previous_command() {
        let c = chain_list("crm.deal.list", 10, 3, &["ID"], &Default::default(), false);
        assert_eq!(c.len(), 3);
        assert_eq!(c[0].key, "c00");
        assert!(c[0].line.contains("filter%5B%3EID%5D=10"), "{}", c[0].line);
        assert!(
            c[2].line
                .contains("filter%5B%3EID%5D=%24result%5Bc01%5D%5B49%5D%5BID%5D"),
            "{}",
            c[2].line
        );
        assert!(c[1].line.contains("start=-1"));
        assert!(c[2].line.contains("start=-1"));
        let c = chain_list("crm.deal.list", 10, 3, &["ID"], &Default::default(), true);
        assert!(c[1].line.contains("start=-1") && c[2].line.contains("start=0"));
        let r = chain_product_rows(7, Some(99), true, 2);
        assert!(r[0].line.contains("filter%5B%3Cid%5D=99") && r[0].line.contains("start=-1"));
        assert!(r[1].line.contains("start=0"), "{}", r[1].line);
    }
}
