//! One module per subcommand.

pub mod audit;
pub mod compare;
pub mod compile;
pub mod demo;
pub mod discover;
pub mod drop_slot;
pub mod example;
pub mod forget;
pub mod init;
pub mod lake;
pub mod lake_view;
pub mod ls;
pub mod new;
pub mod plan;
pub mod quarantine;
pub mod quarantine_retry;
pub mod query;
pub mod replay;
pub mod run;
pub mod runs;
pub mod schema;
pub mod show;
pub mod test;
pub mod upgrade_check;
pub mod validate;

/// Prints rows as an aligned text table (first row is the header).
pub fn print_table(rows: &[Vec<String>]) {
    let Some(first) = rows.first() else { return };
    let widths: Vec<usize> = (0..first.len())
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for (n, row) in rows.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                let pad = widths[i].saturating_sub(cell.chars().count());
                // Numbers right-aligned, text left-aligned.
                if n > 0 && cell.chars().next().is_some_and(|c| c.is_ascii_digit()) {
                    format!("{}{cell}", " ".repeat(pad))
                } else {
                    format!("{cell}{}", " ".repeat(pad))
                }
            })
            .collect();
        println!("  {}", line.join("  ").trim_end());
        if n == 0 {
            println!(
                "  {}",
                widths
                    .iter()
                    .map(|w| "-".repeat(*w))
                    .collect::<Vec<_>>()
                    .join("  ")
            );
        }
    }
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn seconds(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}
