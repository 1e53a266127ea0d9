//! Name resolution for `fetch` and `ls` (PRODUCT.md): an exact file name,
//! the name without its extension, case-insensitively; or a content id or an
//! unambiguous prefix of at least 8 hex digits. Pure.

use std::collections::BTreeSet;

use crate::id::{ContentId, MIN_PREFIX_HEX};

#[derive(Debug, PartialEq, Eq)]
pub enum Resolution {
    One(ContentId),
    /// Several different contents match; the user must pick one by id.
    Ambiguous(Vec<ContentId>),
    None,
}

/// The forms of `name` a query may match: the name itself, without its last
/// extension, and without every extension (`a.tar.gz` -> `a.tar`, `a`).
fn stems(name: &str) -> [&str; 2] {
    let last = match name.rsplit_once('.') {
        Some((s, _)) if !s.is_empty() => s,
        _ => name,
    };
    let first = match name.split_once('.') {
        Some((s, _)) if !s.is_empty() => s,
        _ => name,
    };
    [last, first]
}

/// Resolves `query` against `(id, names)` candidates, most specific first:
/// exact name, then name without extension, then id prefix.
pub fn resolve<'a, I, N>(query: &str, candidates: I) -> Resolution
where
    I: IntoIterator<Item = (ContentId, N)> + Clone,
    N: IntoIterator<Item = &'a str>,
{
    let query = query.trim();
    if query.is_empty() {
        return Resolution::None;
    }
    let pick = |set: BTreeSet<ContentId>| match set.len() {
        0 => None,
        1 => Some(Resolution::One(*set.iter().next().expect("one element"))),
        _ => Some(Resolution::Ambiguous(set.into_iter().collect())),
    };
    let exact: BTreeSet<ContentId> = candidates
        .clone()
        .into_iter()
        .filter_map(|(id, names)| {
            names_match(names, |n| n.eq_ignore_ascii_case(query)).then_some(id)
        })
        .collect();
    if let Some(r) = pick(exact) {
        return r;
    }
    let stem: BTreeSet<ContentId> = candidates
        .clone()
        .into_iter()
        .filter_map(|(id, names)| {
            names_match(names, |n| {
                stems(n).iter().any(|s| s.eq_ignore_ascii_case(query))
            })
            .then_some(id)
        })
        .collect();
    if let Some(r) = pick(stem) {
        return r;
    }
    if query.len() >= MIN_PREFIX_HEX
        && query.len() <= 64
        && query.bytes().all(|b| b.is_ascii_hexdigit())
    {
        let by_id: BTreeSet<ContentId> = candidates
            .into_iter()
            .map(|(id, _)| id)
            .filter(|id| id.has_hex_prefix(query))
            .collect();
        if let Some(r) = pick(by_id) {
            return r;
        }
    }
    Resolution::None
}

fn names_match<'a, N: IntoIterator<Item = &'a str>>(names: N, f: impl Fn(&str) -> bool) -> bool {
    names.into_iter().any(f)
}

/// One name a content goes by, and how much its holders are trusted: a
/// name from a holder that proved it holds the content (it sent the
/// manifest) ranks above one from holders that only listed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameChoice<'a> {
    pub name: &'a str,
    pub proven: bool,
}

/// The name a download is saved under, given what the user typed and the
/// names the content goes by. Never a name a holder merely listed first:
/// 1. a name equal to the query (case-sensitive, then case-insensitive);
/// 2. a name whose stem equals the query (`data` -> `data.bin`);
/// 3. otherwise (an id prefix) any name;
///
/// and within the first step that finds any, a proven holder's name first,
/// then the first in sort order, so the choice is deterministic.
pub fn choose_name(query: &str, names: &[NameChoice<'_>]) -> Option<String> {
    let query = query.trim();
    let best = |f: &dyn Fn(&str) -> bool| {
        names
            .iter()
            .filter(|n| f(n.name))
            .min_by(|a, b| b.proven.cmp(&a.proven).then(a.name.cmp(b.name)))
            .map(|n| n.name.to_string())
    };
    best(&|n| n == query)
        .or_else(|| best(&|n| n.eq_ignore_ascii_case(query)))
        .or_else(|| best(&|n| stems(n).iter().any(|s| s.eq_ignore_ascii_case(query))))
        .or_else(|| best(&|_| true))
}

/// `ls QUERY` filter: a case-insensitive substring of a name, or an id prefix.
pub fn matches_filter<'a>(
    query: &str,
    id: &ContentId,
    mut names: impl Iterator<Item = &'a str>,
) -> bool {
    let q = query.to_lowercase();
    names.any(|n| n.to_lowercase().contains(&q)) || (q.len() >= 4 && id.has_hex_prefix(&q))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> ContentId {
        ContentId([b; 32])
    }

    fn run(query: &str, c: &[(ContentId, Vec<&'static str>)]) -> Resolution {
        resolve(
            query,
            c.iter().map(|(id, names)| (*id, names.iter().copied())),
        )
    }

    #[test]
    fn exact_then_stem_then_prefix() {
        let c = vec![
            (id(1), vec!["photo.png"]),
            (id(2), vec!["Photo"]),
            (id(3), vec!["song.mp3"]),
        ];
        assert_eq!(run("photo.png", &c), Resolution::One(id(1)));
        assert_eq!(run("PHOTO", &c), Resolution::One(id(2)), "exact beats stem");
        assert_eq!(run("song", &c), Resolution::One(id(3)));
        assert_eq!(run("0303030303", &c), Resolution::One(id(3)));
        assert_eq!(run("0303", &c), Resolution::None, "prefix needs 8 digits");
        assert_eq!(run("nothing", &c), Resolution::None);
        assert_eq!(run("  ", &c), Resolution::None);
    }

    #[test]
    fn ambiguous_names_list_every_candidate() {
        let c = vec![
            (id(1), vec!["photo.png"]),
            (id(2), vec!["photo.jpg"]),
            (id(3), vec!["other"]),
        ];
        assert_eq!(run("photo", &c), Resolution::Ambiguous(vec![id(1), id(2)]));
        // The same content under two names is not ambiguous.
        let c = vec![(id(1), vec!["photo.png", "photo.PNG"])];
        assert_eq!(run("photo", &c), Resolution::One(id(1)));
    }

    #[test]
    fn multi_extension_names() {
        let c = vec![(id(1), vec!["backup.tar.gz"])];
        assert_eq!(run("backup", &c), Resolution::One(id(1)));
        assert_eq!(run("backup.tar", &c), Resolution::One(id(1)));
        let c = vec![(id(1), vec![".hidden"])];
        assert_eq!(run(".hidden", &c), Resolution::One(id(1)));
    }

    #[test]
    fn saved_name_is_the_one_asked_for() {
        let n = |name, proven| NameChoice { name, proven };
        let names = [
            n("0-invoice.pdf.exe", false),
            n("data.bin", false),
            n("Data.BIN", true),
        ];
        assert_eq!(choose_name("data.bin", &names).as_deref(), Some("data.bin"));
        assert_eq!(
            choose_name("DATA.bin", &names).as_deref(),
            Some("Data.BIN"),
            "case-insensitive: the proven holder's spelling"
        );
        assert_eq!(choose_name(" data ", &names).as_deref(), Some("Data.BIN"));
        let names = [n("0-invoice.pdf.exe", false), n("data.bin", false)];
        assert_eq!(choose_name("data", &names).as_deref(), Some("data.bin"));
        assert_eq!(
            choose_name("0123abcd", &names).as_deref(),
            Some("0-invoice.pdf.exe"),
            "nothing matches: deterministic"
        );
        let names = [n("0-invoice.pdf.exe", false), n("z.bin", true)];
        assert_eq!(
            choose_name("0123abcd", &names).as_deref(),
            Some("z.bin"),
            "nothing matches: the proven holder's name"
        );
        assert_eq!(choose_name("x", &[]), None);
    }

    #[test]
    fn filter() {
        assert!(matches_filter("HOT", &id(1), ["photo.png"].into_iter()));
        assert!(matches_filter("0101", &id(1), ["x"].into_iter()));
        assert!(!matches_filter("zzz", &id(1), ["photo.png"].into_iter()));
    }
}
