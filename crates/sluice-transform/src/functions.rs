//! Cleaning helpers usable in any model, beside DataFusion's own functions.
//!
//! - `parse_money(text)` → decimal(38,6): `"$1,234.50"`, `"(12.00)"`, `"1.234,50 €"`; NULL if not money.
//! - `micros_to_units(bigint)` → decimal(38,6): Google's `cost_micros` exactly.
//! - `convert_currency(amount, from, to, date)` → decimal(38,6), from `models/currency_rates.csv`
//!   (`date,from,to,rate`: one `from` is `rate` `to`; the latest rate on or before `date`,
//!   the inverse pair, or a cross rate through USD; NULL when no rate is known).
//! - `safe_cast_bigint|double|decimal|date|timestamp|boolean(text)`: NULL instead of an error,
//!   and `castable(text, 'bigint')` to flag the values that did not cast.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use chrono::NaiveDate;
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Date32Array, Decimal128Array, Float64Array, Int64Array,
    TimestampMicrosecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::Result as DfResult;
use datafusion::logical_expr::{
    create_udf, ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    TypeSignature, Volatility,
};
use rust_decimal::Decimal;
use sluice_core::config::ConfigError;

use crate::pii::utf8_arg;

/// Scale of every money value the helpers return.
pub const MONEY_SCALE: i8 = 6;
const MONEY: DataType = DataType::Decimal128(38, MONEY_SCALE);

/// Exchange rates by (from, to), then by date.
#[derive(Debug, Clone, Default)]
pub struct CurrencyRates {
    rates: BTreeMap<(String, String), BTreeMap<NaiveDate, Decimal>>,
}

impl CurrencyRates {
    /// Reads `date,from,to,rate` lines; a missing file means no rates.
    pub fn load(path: &Path) -> Result<CurrencyRates, ConfigError> {
        let Ok(text) = std::fs::read_to_string(path) else {
            return Ok(CurrencyRates::default());
        };
        let mut rates = CurrencyRates::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if n == 0 && line.starts_with("date") || line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parts: Vec<&str> = line.split(',').map(str::trim).collect();
            let offset = text.lines().take(n).map(|l| l.len() + 1).sum::<usize>();
            let bad = |m: &str| {
                crate::project::sql_error(path, &text, Some(offset), format!("{m}: `{line}`"))
            };
            let [date, from, to, rate] = parts[..] else {
                return Err(bad("expected date,from,to,rate"));
            };
            let date = NaiveDate::from_str(date).map_err(|_| bad("invalid date"))?;
            let rate = Decimal::from_str(rate).map_err(|_| bad("invalid rate"))?;
            rates.insert(date, from, to, rate);
        }
        Ok(rates)
    }

    pub fn insert(&mut self, date: NaiveDate, from: &str, to: &str, rate: Decimal) {
        self.rates
            .entry((from.to_ascii_uppercase(), to.to_ascii_uppercase()))
            .or_default()
            .insert(date, rate);
    }

    /// Every rate: `(date, from, to, rate)`.
    pub fn entries(&self) -> impl Iterator<Item = (NaiveDate, &str, &str, Decimal)> + '_ {
        self.rates.iter().flat_map(|((from, to), by_date)| {
            by_date
                .iter()
                .map(move |(date, rate)| (*date, from.as_str(), to.as_str(), *rate))
        })
    }

    fn direct(&self, from: &str, to: &str, date: NaiveDate) -> Option<Decimal> {
        let on_or_before = |f: &str, t: &str| {
            self.rates
                .get(&(f.to_string(), t.to_string()))
                .and_then(|m| m.range(..=date).next_back().map(|(_, r)| *r))
        };
        on_or_before(from, to)
            .or_else(|| on_or_before(to, from).and_then(|r| Decimal::ONE.checked_div(r)))
    }

    /// The rate from `from` to `to` on `date`.
    pub fn rate(&self, from: &str, to: &str, date: NaiveDate) -> Option<Decimal> {
        let (from, to) = (from.to_ascii_uppercase(), to.to_ascii_uppercase());
        if from == to {
            return Some(Decimal::ONE);
        }
        self.direct(&from, &to, date).or_else(|| {
            self.direct(&from, "USD", date)?
                .checked_mul(self.direct("USD", &to, date)?)
        })
    }
}

/// Every helper, with the rates they convert with.
pub fn functions(rates: &CurrencyRates) -> Vec<ScalarUDF> {
    let rates = Arc::new(rates.clone());
    let mut out = vec![
        create_udf(
            "parse_money",
            vec![DataType::Utf8],
            MONEY,
            Volatility::Immutable,
            Arc::new(|args: &[ColumnarValue]| {
                let input = utf8_arg(args, 0)?;
                let out: Decimal128Array = input
                    .iter()
                    .map(|v| v.and_then(parse_money).and_then(to_units))
                    .collect();
                money(out)
            }),
        ),
        create_udf(
            "micros_to_units",
            vec![DataType::Int64],
            MONEY,
            Volatility::Immutable,
            Arc::new(|args: &[ColumnarValue]| {
                let arrays = ColumnarValue::values_to_arrays(args)?;
                let input = cast(&arrays[0], &DataType::Int64)?;
                let input = input.as_any().downcast_ref::<Int64Array>().expect("Int64");
                // micros are units at scale 6: the same integer, exactly.
                let out: Decimal128Array = input.iter().map(|v| v.map(i128::from)).collect();
                money(out)
            }),
        ),
        coercing(create_udf(
            "convert_currency",
            vec![MONEY, DataType::Utf8, DataType::Utf8, DataType::Date32],
            MONEY,
            Volatility::Immutable,
            Arc::new(move |args: &[ColumnarValue]| {
                let arrays = ColumnarValue::values_to_arrays(args)?;
                let amount = cast(&arrays[0], &MONEY)?;
                let amount = amount
                    .as_any()
                    .downcast_ref::<Decimal128Array>()
                    .expect("decimal");
                let from = utf8_arg(args, 1)?;
                let to = utf8_arg(args, 2)?;
                let date = cast(&arrays[3], &DataType::Date32)?;
                let date = date.as_any().downcast_ref::<Date32Array>().expect("date");
                let out: Decimal128Array = (0..amount.len())
                    .map(|i| {
                        if amount.is_null(i) || from.is_null(i) || to.is_null(i) || date.is_null(i)
                        {
                            return None;
                        }
                        let day = date.value_as_date(i)?;
                        let rate = rates.rate(from.value(i), to.value(i), day)?;
                        // Beyond rust_decimal's 96 bits (a spend of 8e22) or an overflowing
                        // product: NULL, which a `not_null` check quarantines; never a panic.
                        let value = Decimal::try_from_i128_with_scale(amount.value(i), 6)
                            .ok()?
                            .checked_mul(rate)?;
                        to_units(value)
                    })
                    .collect();
                money(out)
            }),
        )),
    ];
    out.extend(safe_casts());
    out
}

/// Wraps a fixed-signature function so any argument that casts to its declared types is
/// accepted (e.g. a `decimal(38,4)` spend where `decimal(38,6)` is declared).
fn coercing(inner: ScalarUDF) -> ScalarUDF {
    ScalarUDF::new_from_impl(Coercing {
        signature: Signature::user_defined(inner.signature().volatility),
        inner,
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Coercing {
    inner: ScalarUDF,
    signature: Signature,
}

impl ScalarUDFImpl for Coercing {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        self.inner.return_type(arg_types)
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        match &self.inner.signature().type_signature {
            TypeSignature::Exact(types) if types.len() == arg_types.len() => Ok(types.clone()),
            _ => datafusion::common::plan_err!(
                "{} takes {} arguments",
                self.name(),
                match &self.inner.signature().type_signature {
                    TypeSignature::Exact(types) => types.len(),
                    _ => 0,
                }
            ),
        }
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        self.inner.invoke_with_args(args)
    }
}

fn money(array: Decimal128Array) -> DfResult<ColumnarValue> {
    Ok(ColumnarValue::Array(
        Arc::new(array.with_precision_and_scale(38, MONEY_SCALE)?) as ArrayRef,
    ))
}

/// A decimal as an integer at scale 6, rounded half away from zero; `None` when it
/// has too many integer digits to carry 6 decimals (rust_decimal then keeps the old
/// scale, and the mantissa read as scale 6 would be a wrong amount).
fn to_units(value: Decimal) -> Option<i128> {
    let mut v = value.round_dp_with_strategy(
        MONEY_SCALE as u32,
        rust_decimal::RoundingStrategy::MidpointAwayFromZero,
    );
    v.rescale(MONEY_SCALE as u32);
    (v.scale() == MONEY_SCALE as u32).then(|| v.mantissa())
}

/// Money text to a decimal: currency symbols/codes and spaces ignored, `(x)` and trailing `-`
/// negative; with both `,` and `.` the last one is the decimal mark; a lone `,` followed by
/// exactly two digits is a decimal comma.
pub fn parse_money(text: &str) -> Option<Decimal> {
    let t = text.trim();
    let negative = t.contains('-') || (t.starts_with('(') && t.ends_with(')'));
    // Currency codes are upper case; lower-case letters mean this is not a money string.
    if t.chars().any(|c| c.is_ascii_lowercase()) {
        return None;
    }
    let body: String = t
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == '.' || *c == ',')
        .collect();
    if !body.chars().any(|c| c.is_ascii_digit()) {
        return None;
    }
    let normalized = match (body.rfind('.'), body.rfind(',')) {
        (Some(d), Some(c)) if c > d => body.replace('.', "").replace(',', "."),
        (Some(_), Some(_)) => body.replace(',', ""),
        (None, Some(c)) if body.len() - c - 1 == 2 && body.matches(',').count() == 1 => {
            body.replace(',', ".")
        }
        _ => body.replace(',', ""),
    };
    let value = Decimal::from_str(&normalized).ok()?;
    Some(if negative { -value } else { value })
}

fn safe_casts() -> Vec<ScalarUDF> {
    let kinds: [(&str, DataType); 6] = [
        ("bigint", DataType::Int64),
        ("double", DataType::Float64),
        ("decimal", MONEY),
        ("date", DataType::Date32),
        (
            "timestamp",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        ),
        ("boolean", DataType::Boolean),
    ];
    let mut out: Vec<ScalarUDF> = kinds
        .iter()
        .map(|(name, ty)| {
            let target = ty.clone();
            create_udf(
                &format!("safe_cast_{name}"),
                vec![DataType::Utf8],
                ty.clone(),
                Volatility::Immutable,
                Arc::new(move |args: &[ColumnarValue]| {
                    let input = utf8_arg(args, 0)?;
                    let trimmed: datafusion::arrow::array::StringArray =
                        input.iter().map(|v| v.map(str::trim)).collect();
                    Ok(ColumnarValue::Array(safe_cast(&trimmed, &target)?))
                }),
            )
        })
        .collect();
    out.push(create_udf(
        "castable",
        vec![DataType::Utf8, DataType::Utf8],
        DataType::Boolean,
        Volatility::Immutable,
        Arc::new(move |args: &[ColumnarValue]| {
            let input = utf8_arg(args, 0)?;
            let kind = utf8_arg(args, 1)?;
            let out: BooleanArray = (0..input.len())
                .map(|i| {
                    if input.is_null(i) {
                        return None;
                    }
                    let ty = kinds
                        .iter()
                        .find(|(n, _)| kind.is_valid(i) && *n == kind.value(i))
                        .map(|(_, t)| t.clone())?;
                    let one: datafusion::arrow::array::StringArray =
                        [Some(input.value(i).trim())].into_iter().collect();
                    let cast = safe_cast(&one, &ty).ok()?;
                    Some(cast.is_valid(0))
                })
                .collect();
            Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef))
        }),
    ));
    out
}

/// Arrow's non-strict cast turns values that do not parse into NULL.
fn safe_cast(input: &dyn Array, target: &DataType) -> DfResult<ArrayRef> {
    let options = datafusion::arrow::compute::CastOptions {
        safe: true,
        ..Default::default()
    };
    let array = datafusion::arrow::compute::cast_with_options(input, target, &options)?;
    // Keep the types exact (a cast may return a subtype view); sanity-check the common ones.
    debug_assert!(
        array.as_any().is::<Int64Array>()
            || array.as_any().is::<Float64Array>()
            || array.as_any().is::<Decimal128Array>()
            || array.as_any().is::<Date32Array>()
            || array.as_any().is::<TimestampMicrosecondArray>()
            || array.as_any().is::<BooleanArray>()
    );
    Ok(array)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_conversion_too_big_for_a_decimal_is_null_not_a_panic() {
        let mut rates = CurrencyRates::default();
        let day = NaiveDate::from_ymd_opt(2024, 7, 1).unwrap();
        rates.insert(day, "EUR", "USD", Decimal::from_str("1.08").unwrap());
        // The inverse of a tiny rate: 1e28, too many digits to carry 6 decimals.
        rates.insert(
            day,
            "XTS",
            "EUR",
            Decimal::from_str("0.0000000000000000000000000001").unwrap(),
        );
        let ctx = datafusion::prelude::SessionContext::new();
        for f in functions(&rates) {
            ctx.register_udf(f);
        }
        let sql = "SELECT \
            CAST(convert_currency(CAST('80000000000000000000000' AS DECIMAL(38, 6)), 'EUR', 'USD', DATE '2024-07-01') AS VARCHAR), \
            CAST(convert_currency(CAST('12.5' AS DECIMAL(38, 6)), 'EUR', 'USD', DATE '2024-07-01') AS VARCHAR), \
            CAST(convert_currency(CAST('1' AS DECIMAL(38, 6)), 'EUR', 'XTS', DATE '2024-07-01') AS VARCHAR)";
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        let row = text.lines().nth(3).unwrap();
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(cells[1..4], ["", "13.500000", ""], "{text}");
    }

    #[test]
    fn money_strings_parse_exactly() {
        let d = |s: &str| Decimal::from_str(s).unwrap();
        assert_eq!(parse_money("$1,234.50"), Some(d("1234.50")));
        assert_eq!(parse_money("1.234,50 €"), Some(d("1234.50")));
        assert_eq!(parse_money("(12.00)"), Some(d("-12.00")));
        assert_eq!(parse_money("EUR 7"), Some(d("7")));
        assert_eq!(parse_money("abc"), None);
    }

    #[test]
    fn rates_use_latest_inverse_and_cross_through_usd() {
        let mut r = CurrencyRates::default();
        let day = |s: &str| NaiveDate::from_str(s).unwrap();
        r.insert(
            day("2024-07-01"),
            "EUR",
            "USD",
            Decimal::from_str("1.10").unwrap(),
        );
        r.insert(
            day("2024-07-03"),
            "EUR",
            "USD",
            Decimal::from_str("1.20").unwrap(),
        );
        r.insert(
            day("2024-07-01"),
            "USD",
            "GBP",
            Decimal::from_str("0.80").unwrap(),
        );
        assert_eq!(
            r.rate("EUR", "USD", day("2024-07-02")),
            Some(Decimal::from_str("1.10").unwrap())
        );
        assert_eq!(
            r.rate("eur", "usd", day("2024-07-05")),
            Some(Decimal::from_str("1.20").unwrap())
        );
        assert_eq!(
            r.rate("EUR", "GBP", day("2024-07-01")),
            Some(Decimal::from_str("0.880").unwrap())
        );
        assert!(r.rate("EUR", "USD", day("2024-06-01")).is_none());
        assert_eq!(r.rate("JPY", "JPY", day("2024-06-01")), Some(Decimal::ONE));
    }
}
