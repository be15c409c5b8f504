//! Entity streams (`campaigns`, `adsets`, `ads`, `ad_accounts`) and the cursor
//! pager every Graph list endpoint shares.

use std::collections::HashSet;

use reqwest::Method;
use serde_json::{json, Map, Value};
use sluice_core::source::{PageSink, Slice, SourceError};
use sluice_core::typing::{Origin, Record};

use super::api::{next_after, GraphApi};
use super::config::FacebookConfig;
use super::streams::entity_fields;
use super::ACCOUNT_FIELDS;
use crate::http::{ApiRequest, ApiResponse, Urgency};

/// Walks a cursor-paged list: `after` until there is no `paging.next`.
pub struct Pager {
    base: ApiRequest,
    after: Option<String>,
    done: bool,
}

impl Pager {
    pub fn new(base: ApiRequest) -> Self {
        Pager {
            base,
            after: None,
            done: false,
        }
    }

    /// The next page as received and parsed; `None` after the last one.
    pub async fn next(
        &mut self,
        api: &GraphApi,
    ) -> Result<Option<(ApiResponse, Value)>, SourceError> {
        if self.done {
            return Ok(None);
        }
        let mut request = self.base.clone();
        if let Some(after) = &self.after {
            request = request.query("after", after.clone()).urgency(Urgency::Continues);
        }
        let (response, page) = api.send_json(&request).await?;
        match next_after(&page) {
            // An empty page with a next link happens; a cursor that does not move would loop forever.
            Some(after) if Some(&after) != self.after.as_ref() => self.after = Some(after),
            _ => self.done = true,
        }
        Ok(Some((response, page)))
    }
}

/// The account `id` (`act_<digits>`): its details, one request.
pub async fn lookup_account(api: &GraphApi, id: &str) -> Result<Value, SourceError> {
    let request = api
        .request(Method::GET, id, id)?
        .query("fields", ACCOUNT_FIELDS);
    Ok(api.send_json(&request).await?.1)
}

/// Every ad account the access token reaches (`me/adaccounts`, paged).
pub async fn list_all_accounts(
    api: &GraphApi,
    config: &FacebookConfig,
) -> Result<Vec<Value>, SourceError> {
    let base = api
        .request(Method::GET, "me/adaccounts", "me")?
        .query("fields", ACCOUNT_FIELDS)
        .query("limit", config.page_size.to_string());
    let mut pager = Pager::new(base);
    let mut out = Vec::new();
    while let Some((_, page)) = pager.next(api).await? {
        out.extend(data(&page).iter().cloned());
    }
    Ok(out)
}

/// The `data` array of a page (empty when absent).
pub fn data(page: &Value) -> &[Value] {
    page.get("data")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// Lands a page and returns the path its records point at.
pub async fn land_json(
    sink: &mut dyn PageSink,
    n: &mut u32,
    dt: &str,
    response: &ApiResponse,
) -> Result<std::sync::Arc<str>, SourceError> {
    *n += 1;
    let landed = sink
        .land(&format!("p{:05}", *n), "json", dt, &response.body)
        .await?;
    Ok(landed.path)
}

/// Account records of one page (a list page or a single account object).
pub fn account_records(
    page: &Value,
    path: std::sync::Arc<str>,
    seen: &mut HashSet<String>,
) -> Vec<Record> {
    let items: Vec<Value> = match page.get("data") {
        Some(_) => data(page).to_vec(),
        None => vec![page.clone()],
    };
    items
        .into_iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let mut fields = v.as_object()?.clone();
            let id = fields
                .get("id")
                .and_then(Value::as_str)
                .map(super::config::normalize_account)?;
            if !seen.insert(id.clone()) {
                return None;
            }
            fields.insert("id".into(), json!(id));
            Some(Record {
                fields,
                origin: Origin {
                    page: path.clone(),
                    line: i as u64 + 1,
                },
            })
        })
        .collect()
}

/// Campaign, ad set or ad records of one page; objects repeated in the slice dropped.
pub fn entity_records(
    page: &Value,
    path: &std::sync::Arc<str>,
    currency: &Value,
    seen: &mut HashSet<String>,
) -> Vec<Record> {
    let mut records = Vec::new();
    for (i, v) in data(page).iter().enumerate() {
        let Some(obj) = v.as_object() else { continue };
        let mut fields: Map<String, Value> = obj.clone();
        let Some(id) = fields.get("id").and_then(Value::as_str).map(String::from) else {
            continue;
        };
        // The API can repeat an object across pages when it changes mid-listing.
        if !seen.insert(id) {
            continue;
        }
        fields.entry("account_currency").or_insert(currency.clone());
        records.push(Record {
            fields,
            origin: Origin {
                page: path.clone(),
                line: i as u64 + 1,
            },
        });
    }
    records
}

pub async fn read_accounts(
    api: &GraphApi,
    config: &FacebookConfig,
    slice: &Slice,
    sink: &mut dyn PageSink,
) -> Result<(), SourceError> {
    let dt = slice
        .params
        .get("dt")
        .and_then(Value::as_str)
        .unwrap_or("1970-01-01")
        .to_string();
    let mut n = 0;
    let mut seen = HashSet::new();
    match config.accounts.list() {
        Some(ids) => {
            for id in ids {
                let request = api
                    .request(Method::GET, &id, &id)?
                    .query("fields", ACCOUNT_FIELDS);
                let (response, page) = api.send_json(&request).await?;
                let path = land_json(sink, &mut n, &dt, &response).await?;
                let records = account_records(&page, path, &mut seen);
                sink.records(records).await?;
            }
        }
        None => {
            let base = api
                .request(Method::GET, "me/adaccounts", "me")?
                .query("fields", ACCOUNT_FIELDS)
                .query("limit", config.page_size.to_string());
            let mut pager = Pager::new(base);
            while let Some((response, page)) = pager.next(api).await? {
                let path = land_json(sink, &mut n, &dt, &response).await?;
                let records = account_records(&page, path, &mut seen);
                sink.records(records).await?;
                if sink.is_cancelled() {
                    return Err(SourceError::transient("cancelled"));
                }
            }
        }
    }
    Ok(())
}

/// `campaigns`, `adsets` or `ads` of one account, changed since the cursor.
pub async fn read_entities(
    api: &GraphApi,
    config: &FacebookConfig,
    stream: &str,
    slice: &Slice,
    sink: &mut dyn PageSink,
) -> Result<(), SourceError> {
    let account = slice
        .params
        .get("account")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let currency = slice.params.get("currency").cloned().unwrap_or(Value::Null);
    let dt = slice
        .params
        .get("dt")
        .and_then(Value::as_str)
        .unwrap_or("1970-01-01")
        .to_string();
    let mut fields: Vec<String> = entity_fields(stream)
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    if let Some(extra) = config
        .streams
        .as_ref()
        .and_then(|s| match stream {
            "campaigns" => s.campaigns.as_ref(),
            "adsets" => s.adsets.as_ref(),
            _ => s.ads.as_ref(),
        })
        .map(|c| c.fields.clone())
    {
        for f in extra {
            if !fields.contains(&f) {
                fields.push(f);
            }
        }
    }
    let mut base = api
        .request(Method::GET, &format!("{account}/{stream}"), &account)?
        .query("fields", fields.join(","))
        .query("limit", config.page_size.to_string());
    if let Some(since) = slice.params.get("updated_since").and_then(Value::as_i64) {
        base = base.query(
            "filtering",
            json!([{"field": "updated_time", "operator": "GREATER_THAN", "value": since}])
                .to_string(),
        );
    }
    let mut pager = Pager::new(base);
    let mut n = 0;
    let mut seen = HashSet::new();
    while let Some((response, page)) = pager.next(api).await? {
        let path = land_json(sink, &mut n, &dt, &response).await?;
        let records = entity_records(&page, &path, &currency, &mut seen);
        sink.records(records).await?;
        if sink.is_cancelled() {
            return Err(SourceError::transient("cancelled"));
        }
    }
    Ok(())
}
