//! Walking a REST response: the dotted-path selector (`data.items`) and the
//! pagination styles, each deciding the next request from the page just received.

use reqwest::header::HeaderMap;
use serde_json::Value;
use sluice_core::source::SourceError;
use url::Url;

use super::config::PaginateConfig;

/// A dotted path into a JSON document: `data.items` → `body["data"]["items"]`.
/// A segment of digits also indexes an array (`results.0.rows`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath(Vec<String>);

impl JsonPath {
    /// Parses `text`; the error says what is wrong, for the config key's message.
    pub fn parse(text: &str) -> Result<JsonPath, String> {
        let segments: Vec<String> = text.split('.').map(str::to_string).collect();
        if segments.iter().any(|s| s.trim().is_empty() || s.trim() != s) {
            return Err(format!(
                "`{text}` is not a dotted path: write the keys joined by `.` (`data.items`)"
            ));
        }
        Ok(JsonPath(segments))
    }

    /// The value at the path, `None` when a key is missing.
    pub fn find<'v>(&self, value: &'v Value) -> Option<&'v Value> {
        self.walk(value, &self.0)
    }

    /// The value at the path inside a record's fields.
    pub fn find_in<'v>(&self, fields: &'v serde_json::Map<String, Value>) -> Option<&'v Value> {
        let (first, rest) = self.0.split_first()?;
        self.walk(fields.get(first)?, rest)
    }

    fn walk<'v>(&self, mut value: &'v Value, segments: &[String]) -> Option<&'v Value> {
        for segment in segments {
            value = match value {
                Value::Object(map) => map.get(segment)?,
                Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(value)
    }
}

impl std::fmt::Display for JsonPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

/// The records of one response: the array at `selector` (or the response itself).
/// A missing key is an error, not an empty page: a typo in `records:` must not
/// load nothing quietly. `null` is an empty page.
pub fn select_records<'v>(
    body: &'v Value,
    selector: Option<&JsonPath>,
) -> Result<&'v [Value], SourceError> {
    let found = match selector {
        Some(path) => path.find(body).ok_or_else(|| {
            SourceError::data(format!("the response has no `{path}` (the `records:` path)"))
        })?,
        None => body,
    };
    match found {
        Value::Array(items) => Ok(items),
        Value::Null => Ok(&[]),
        other => Err(SourceError::data(format!(
            "the records at `{}` are {}, not an array{}",
            selector.map_or_else(|| "the response".to_string(), |p| p.to_string()),
            kind(other),
            if selector.is_none() {
                ": set `records:` to the path of the array (`data.items`)"
            } else {
                ""
            }
        ))),
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

/// Where the next request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextPage {
    /// The stream's URL with these paging parameters.
    Params(Vec<(String, String)>),
    /// A URL the API handed back, used as given (its query carries the paging).
    Url(Url),
}

/// The paging parameters of the first request.
pub fn first_page(paginate: Option<&PaginateConfig>) -> Vec<(String, String)> {
    match paginate {
        Some(PaginateConfig::Offset {
            offset_param,
            limit_param,
            limit,
        }) => vec![
            (offset_param.clone(), "0".into()),
            (limit_param.clone(), limit.to_string()),
        ],
        Some(PaginateConfig::Page {
            page_param,
            first_page,
            size_param,
            page_size,
        }) => {
            let mut params = vec![(page_param.clone(), first_page.to_string())];
            if let (Some(param), Some(size)) = (size_param, page_size) {
                params.push((param.clone(), size.to_string()));
            }
            params
        }
        _ => Vec::new(),
    }
}

/// Where a page received from `url` leads.
pub struct Received<'r> {
    pub body: &'r Value,
    pub headers: &'r HeaderMap,
    /// How many records it held.
    pub records: usize,
    pub url: &'r Url,
}

/// What the page just received says about the next one; `None` at the end.
/// `current` is the paging of the page received. A URL the API hands back must stay
/// under `base` ([`crate::http::follow`]).
pub fn next_page(
    paginate: Option<&PaginateConfig>,
    current: &NextPage,
    page: &Received<'_>,
    base: &Url,
) -> Result<Option<NextPage>, SourceError> {
    let (body, records) = (page.body, page.records);
    let param = |name: &str| match current {
        NextPage::Params(params) => params
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.parse::<u64>().ok()),
        NextPage::Url(_) => None,
    };
    let next = match paginate {
        None => None,
        Some(PaginateConfig::Cursor {
            cursor_path,
            cursor_param,
        }) => {
            let path = JsonPath::parse(cursor_path).map_err(SourceError::data)?;
            let cursor = match path.find(body) {
                Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            cursor
                .filter(|_| records > 0)
                .map(|c| NextPage::Params(vec![(cursor_param.clone(), c)]))
        }
        Some(PaginateConfig::Offset {
            offset_param,
            limit_param,
            limit,
        }) => (records as u64 >= *limit && records > 0).then(|| {
            let offset = param(offset_param).unwrap_or(0) + records as u64;
            NextPage::Params(vec![
                (offset_param.clone(), offset.to_string()),
                (limit_param.clone(), limit.to_string()),
            ])
        }),
        Some(PaginateConfig::Page {
            page_param,
            first_page,
            size_param,
            page_size,
        }) => {
            let short = page_size.is_some_and(|size| (records as u64) < size);
            (records > 0 && !short).then(|| {
                let page = param(page_param).unwrap_or(*first_page) + 1;
                let mut params = vec![(page_param.clone(), page.to_string())];
                if let (Some(param), Some(size)) = (size_param, page_size) {
                    params.push((param.clone(), size.to_string()));
                }
                NextPage::Params(params)
            })
        }
        Some(PaginateConfig::LinkHeader) => page
            .headers
            .get_all(reqwest::header::LINK)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(link_next)
            .map(|target| crate::http::follow(base, page.url, &target))
            .transpose()?
            .map(NextPage::Url),
        Some(PaginateConfig::NextUrl { next_url_path }) => {
            let path = JsonPath::parse(next_url_path).map_err(SourceError::data)?;
            match path.find(body) {
                Some(Value::String(s)) if !s.trim().is_empty() => {
                    Some(NextPage::Url(crate::http::follow(base, page.url, s)?))
                }
                _ => None,
            }
        }
    };
    // An API that hands back the page it just served would be read forever.
    if next.as_ref() == Some(current) {
        return Err(SourceError::data(
            "the API pointed the next page at the page it just returned: stopping rather than looping",
        ));
    }
    Ok(next)
}

/// The `rel="next"` target of one `Link` header value (RFC 8288): links are
/// separated by commas outside `<…>` and quoted strings; `rel` may list several
/// space-separated relation types.
pub fn link_next(header: &str) -> Option<String> {
    let mut links = Vec::new();
    let (mut start, mut in_target, mut in_quotes) = (0, false, false);
    for (i, c) in header.char_indices() {
        match c {
            '<' if !in_quotes => in_target = true,
            '>' if !in_quotes => in_target = false,
            '"' if !in_target => in_quotes = !in_quotes,
            ',' if !in_target && !in_quotes => {
                links.push(&header[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    links.push(&header[start..]);
    links.into_iter().find_map(|link| {
        let (target, params) = link.trim().strip_prefix('<')?.split_once('>')?;
        let is_next = params.split(';').any(|param| {
            param.split_once('=').is_some_and(|(name, value)| {
                name.trim().eq_ignore_ascii_case("rel")
                    && value
                        .trim()
                        .trim_matches('"')
                        .split_ascii_whitespace()
                        .any(|rel| rel.eq_ignore_ascii_case("next"))
            })
        });
        is_next.then(|| target.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dotted_paths_find_objects_and_array_items() {
        let body = json!({"data": {"items": [{"id": 1}], "pages": [{"n": 7}]}});
        let items = JsonPath::parse("data.items").unwrap();
        assert_eq!(select_records(&body, Some(&items)).unwrap().len(), 1);
        assert_eq!(
            JsonPath::parse("data.pages.0.n").unwrap().find(&body),
            Some(&json!(7))
        );
        let typo = JsonPath::parse("data.itmes").unwrap();
        let err = select_records(&body, Some(&typo)).unwrap_err();
        assert!(err.message.contains("no `data.itmes`"), "{}", err.message);
        let err = select_records(&body, None).unwrap_err();
        assert!(err.message.contains("set `records:`"), "{}", err.message);
        assert!(JsonPath::parse("data..items").is_err());
        assert!(JsonPath::parse("").is_err());
        assert!(select_records(&json!({"data": null}), Some(&JsonPath::parse("data").unwrap()))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn link_headers_yield_the_next_target_only() {
        let github = r#"<https://api.github.com/repositories/1/issues?page=2>; rel="next", <https://api.github.com/repositories/1/issues?page=5>; rel="last""#;
        assert_eq!(
            link_next(github).as_deref(),
            Some("https://api.github.com/repositories/1/issues?page=2")
        );
        // Commas inside quotes and targets do not split links; rel lists several types.
        let tricky = r#"</a?x=1,2>; title="one, two"; rel="prev", </b>; rel="last next""#;
        assert_eq!(link_next(tricky).as_deref(), Some("/b"));
        assert_eq!(link_next(r#"</a>; rel="last""#), None);
        assert_eq!(link_next(r#"</n>; REL=next"#).as_deref(), Some("/n"));
    }

    #[test]
    fn offset_and_page_stop_at_a_short_page_and_loops_are_refused() {
        let url = Url::parse("http://127.0.0.1/v1/items").unwrap();
        let offset = PaginateConfig::Offset {
            offset_param: "offset".into(),
            limit_param: "limit".into(),
            limit: 2,
        };
        let base = Url::parse("http://127.0.0.1/v1/").unwrap();
        let (body, headers) = (json!([]), HeaderMap::new());
        let page = |records| Received {
            body: &body,
            headers: &headers,
            records,
            url: &url,
        };
        let first = NextPage::Params(first_page(Some(&offset)));
        let next = next_page(Some(&offset), &first, &page(2), &base)
            .unwrap()
            .unwrap();
        assert_eq!(
            next,
            NextPage::Params(vec![
                ("offset".into(), "2".into()),
                ("limit".into(), "2".into())
            ])
        );
        assert_eq!(
            next_page(Some(&offset), &next, &page(1), &base).unwrap(),
            None
        );
        let cursor = PaginateConfig::Cursor {
            cursor_path: "next".into(),
            cursor_param: "after".into(),
        };
        let current = NextPage::Params(vec![("after".into(), "abc".into())]);
        let body = json!({"next": "abc"});
        let received = Received {
            body: &body,
            headers: &headers,
            records: 3,
            url: &url,
        };
        let err = next_page(Some(&cursor), &current, &received, &base).unwrap_err();
        assert!(err.message.contains("looping"), "{}", err.message);
    }
}
