//! Connection URLs, as database sources and destinations both read them.

use url::Url;

/// `url` without its query parameter `name`, and that parameter's value: a setting
/// sluice decides itself (e.g. `sslmode`, which tokio-postgres only half knows)
/// taken out before the URL goes to the driver. The other parameters keep their order.
pub fn take_query_param(url: &Url, name: &str) -> (Url, Option<String>) {
    let value = url
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned());
    let rest: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut stripped = url.clone();
    stripped.set_query(None);
    if !rest.is_empty() {
        stripped.query_pairs_mut().extend_pairs(rest);
    }
    (stripped, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_one_parameter_and_keeps_the_others_in_order() {
        let url =
            Url::parse("postgres://u@h/db?application_name=x&sslmode=require&options=y").unwrap();
        let (rest, mode) = take_query_param(&url, "sslmode");
        assert_eq!(mode.as_deref(), Some("require"));
        assert_eq!(
            rest.as_str(),
            "postgres://u@h/db?application_name=x&options=y"
        );
        let (same, none) = take_query_param(&rest, "sslmode");
        assert_eq!((same.as_str(), none), (rest.as_str(), None));
        let bare = Url::parse("postgres://u@h/db?sslmode=disable").unwrap();
        assert_eq!(
            take_query_param(&bare, "sslmode").0.as_str(),
            "postgres://u@h/db"
        );
    }
}
