//! What `lanshare ls` prints: the rows of the network's contents as their
//! pages arrive from the node, as a table for people or as one JSON array
//! for scripts, never the whole listing in memory. Talks to the node
//! through the control [`Client`] only.

use std::io::Write;
use std::process::ExitCode;

use crate::api::ContentView;
use crate::cli::{HomeArg, absolute};
use crate::control::Client;
use crate::logs::human_bytes;
use crate::manifest::Category;

/// `ls`: prints the rows as their pages arrive, as a table or as one JSON
/// array (the same bytes as the whole list printed with
/// `serde_json::to_writer_pretty`).
pub async fn ls(
    home: &HomeArg,
    query: Option<String>,
    category: Option<Category>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut pages = Client::new(&absolute(&home.home)?)
        .ls_pages(query, category)
        .await?;
    let mut out = std::io::stdout().lock();
    let mut rows = 0usize;
    while let Some(page) = pages.next().await? {
        for v in &page {
            if json {
                write_json_item(&mut out, v, rows == 0)?;
            } else {
                if rows == 0 {
                    print_ls_header(&mut out)?;
                }
                print_ls_row(&mut out, v)?;
            }
            rows += 1;
        }
    }
    match (json, rows) {
        (true, _) => end_json_array(&mut out, rows)?,
        (false, 0) => writeln!(
            out,
            "Nothing found on the network yet. Peers appear within a second of starting; see `lanshare peers`."
        )?,
        (false, _) => {}
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// One element of a pretty-printed JSON array: `[` or `,`, a new line,
/// then `v` pretty-printed one level in.
fn write_json_item(
    out: &mut impl Write,
    v: &impl serde::Serialize,
    first: bool,
) -> anyhow::Result<()> {
    // A pretty-printed value has no raw new line inside a string, so
    // indenting each line is the same as printing it one level down.
    let text = serde_json::to_string_pretty(v)?;
    out.write_all(if first { b"[" } else { b"," })?;
    for line in text.lines() {
        write!(out, "\n  {line}")?;
    }
    Ok(())
}

/// Closes the array [`write_json_item`] wrote `rows` elements of (`[]`
/// when empty), with the new line `println!` would add.
fn end_json_array(out: &mut impl Write, rows: usize) -> std::io::Result<()> {
    if rows == 0 {
        writeln!(out, "[]")
    } else {
        writeln!(out, "\n]")
    }
}

fn print_ls_header(out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<32} {:>10}  {:<8}  {:<9}  {:<12}  {:<24}  COMMENT",
        "NAME", "SIZE", "CATEGORY", "HOLDERS", "ID", "HELD BY"
    )
}

fn print_ls_row(out: &mut impl Write, v: &ContentView) -> std::io::Result<()> {
    if v.kind == crate::api::ContentKind::Folder {
        return print_folder_row(out, v);
    }
    let holders = if v.partial > 0 {
        format!("{}+{}part", v.complete, v.partial)
    } else {
        v.complete.to_string()
    };
    let held_by: Vec<&str> = v.holders.iter().map(|h| h.name.as_str()).collect();
    writeln!(
        out,
        "{:<32} {:>10}  {:<8}  {:<9}  {:<12}  {:<24}  {}",
        v.name,
        human_bytes(v.size as f64),
        v.category,
        holders,
        &v.id[..12],
        held_by.join(","),
        v.comment
    )
}

/// A folder's row in `ls`: `name/`, its total size, files and holders.
fn print_folder_row(out: &mut impl Write, v: &ContentView) -> std::io::Result<()> {
    let holders = if v.partial > 0 {
        format!("{}+{}part", v.complete, v.partial)
    } else {
        v.complete.to_string()
    };
    let held_by: Vec<&str> = v.holders.iter().map(|h| h.name.as_str()).collect();
    writeln!(
        out,
        "{:<32} {:>10}  {:<8}  {:<9}  {:<12}  {:<24}  {} file(s)",
        format!("{}/", v.name),
        human_bytes(v.size as f64),
        "folder",
        holders,
        "-",
        held_by.join(","),
        v.files
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ContentKind, HolderView};

    fn view(name: &str) -> ContentView {
        ContentView {
            kind: ContentKind::File,
            id: "ab".repeat(32),
            name: name.to_string(),
            names: vec![name.to_string(), format!("other/{name}")],
            size: 1234,
            category: Category::Other,
            comment: "a \"quoted\"\nline".to_string(),
            complete: 1,
            partial: 0,
            holders: vec![HolderView {
                name: "peer".into(),
                addr: "127.0.0.1:1".into(),
                chunks: 1,
                total: 1,
            }],
            local: false,
            files: 0,
        }
    }

    /// The array written a row at a time is byte for byte the whole list
    /// pretty-printed (what `ls --json` printed before it was streamed).
    #[test]
    fn streamed_json_is_the_whole_list_pretty_printed() {
        for n in [0, 1, 3] {
            let views: Vec<ContentView> = (0..n).map(|i| view(&format!("f{i}.txt"))).collect();
            let mut whole = serde_json::to_vec_pretty(&views).unwrap();
            whole.push(b'\n');
            let mut streamed = Vec::new();
            for (i, v) in views.iter().enumerate() {
                write_json_item(&mut streamed, v, i == 0).unwrap();
            }
            end_json_array(&mut streamed, views.len()).unwrap();
            assert_eq!(
                String::from_utf8(streamed).unwrap(),
                String::from_utf8(whole).unwrap(),
                "{n} rows"
            );
        }
    }
}
