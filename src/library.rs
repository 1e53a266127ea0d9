//! The library as the web API pages it: what the network offers (contents
//! with at least one online holder, each named by its path, e.g.
//! `holiday/day1/beach.jpg`; empty-folder entries left out), filtered by a
//! query (matching paths too) and a category,
//! sorted, and cut to one page, so a page of 100 rows out of 100,000 costs
//! one pass over the dictionary and 100 views. Reads the dictionary only;
//! never writes it, never formats text for people.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::api::ContentView;
use crate::dict::Dict;
use crate::id::ContentId;
use crate::manifest::Category;

/// Most rows one page holds.
pub const MAX_LIMIT: usize = 500;

/// What a library page is sorted by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SortKey {
    #[default]
    Name,
    Size,
    /// Online holders.
    Holders,
    Category,
}

/// Ascending or descending.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    #[default]
    Asc,
    Desc,
}

/// One page of the library, as asked.
#[derive(Clone, Debug, PartialEq)]
pub struct LibraryQuery {
    /// Kept when a name or the comment contains it (case-insensitive), or
    /// the content id starts with it (4 hex digits at least).
    pub query: Option<String>,
    pub category: Option<Category>,
    pub sort: SortKey,
    pub order: Order,
    pub offset: usize,
    /// At most [`MAX_LIMIT`].
    pub limit: usize,
}

/// Matches per category (for the filter buttons).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CategoryCount {
    pub category: Category,
    pub count: usize,
}

/// One page of the library.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LibraryPage {
    /// Contents matching the query and category, over every page.
    pub total: usize,
    pub offset: usize,
    pub items: Vec<ContentView>,
    /// Contents matching the query, by category (the category filter aside).
    pub categories: Vec<CategoryCount>,
}

/// What one content sorts by.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Text(String),
    Number(u64),
}

struct Row {
    key: Key,
    id: ContentId,
}

/// The page `q` asks for; `local`: contents this node holds complete.
pub fn page(dict: &Dict, q: &LibraryQuery, local: &HashSet<ContentId>) -> LibraryPage {
    let needle = q
        .query
        .as_deref()
        .map(str::to_lowercase)
        .filter(|s| !s.is_empty());
    let by_id = needle
        .as_deref()
        .filter(|n| n.len() >= 4 && n.chars().all(|c| c.is_ascii_hexdigit()));
    let mut counts = [0usize; 7];
    let mut rows: Vec<Row> = dict.contents.map_all(|id, c| {
        let online = c.holders.keys().filter(|h| dict.peers.is_online(h)).count();
        // An empty-folder entry (`holiday/empty/`) is no content to list.
        if online == 0 || c.names.iter().all(|n| n.ends_with('/')) {
            return None;
        }
        if let Some(n) = needle.as_deref() {
            let hit = c.names.iter().any(|name| name.to_lowercase().contains(n))
                || c.comment.to_lowercase().contains(n)
                || by_id.is_some_and(|h| id.has_hex_prefix(h));
            if !hit {
                return None;
            }
        }
        counts[c.category as usize] += 1;
        if q.category.is_some_and(|cat| c.category != cat) {
            return None;
        }
        let key = match q.sort {
            SortKey::Name => Key::Text(
                c.names
                    .iter()
                    .next()
                    .map(|n| n.to_lowercase())
                    .unwrap_or_default(),
            ),
            SortKey::Size => Key::Number(c.size),
            SortKey::Holders => Key::Number(online as u64),
            SortKey::Category => Key::Text(c.category.as_str().to_string()),
        };
        Some(Row { key, id: *id })
    });
    let order = |a: &Row, b: &Row| {
        let ord = a.key.cmp(&b.key).then(a.id.cmp(&b.id));
        match q.order {
            Order::Asc => ord,
            Order::Desc => ord.reverse(),
        }
    };
    let total = rows.len();
    let limit = q.limit.min(MAX_LIMIT);
    // Only the rows up to the page's end need sorting: select them first.
    let end = q.offset.saturating_add(limit);
    if end < rows.len() {
        rows.select_nth_unstable_by(end, order);
        rows.truncate(end);
    }
    rows.sort_unstable_by(order);
    let items = rows
        .iter()
        .skip(q.offset)
        .take(limit)
        .filter_map(|r| dict.view(&r.id, local.contains(&r.id)))
        .collect();
    let categories = Category::ALL
        .iter()
        .map(|c| CategoryCount {
            category: *c,
            count: counts[*c as usize],
        })
        .collect();
    LibraryPage {
        total,
        offset: q.offset,
        items,
        categories,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::FoundVia;
    use crate::chunkset::ChunkSet;
    use crate::dict::Sighting;
    use crate::id::NodeId;
    use crate::inventory::Inventory;
    use crate::wire::InventoryEntry;
    use std::time::{Duration, Instant};

    /// A dictionary with one online peer offering `n` contents.
    fn offered(n: u32) -> Dict {
        let d = Dict::with_limits(1_000_000, 1 << 30);
        let peer = NodeId([9; 16]);
        let s = Sighting {
            id: peer,
            name: "alpha",
            addr: "10.0.0.1:7373".parse().unwrap(),
            via: FoundVia::Multicast,
            interval: Duration::from_secs(5),
            digest: [1; 16],
            contents: n,
        };
        d.observe(s, Instant::now());
        let entries = (0..n)
            .map(|i| {
                let mut id = [0u8; 32];
                id[..4].copy_from_slice(&i.to_be_bytes());
                let ext = ["mp3", "mkv", "png", "txt", "pdf", "zip", "bin"][i as usize % 7];
                InventoryEntry {
                    id: ContentId(id),
                    name: format!("file {i:06}.{ext}"),
                    more_paths: Default::default(),
                    size: u64::from(i) * 1000,
                    category: Category::from_name(&format!("x.{ext}")),
                    comment: if i % 10 == 0 {
                        "live".into()
                    } else {
                        String::new()
                    },
                    chunks: ChunkSet::Full,
                }
            })
            .collect();
        d.set_inventory(peer, Inventory::new(entries));
        d
    }

    fn query(
        q: Option<&str>,
        category: Option<Category>,
        sort: SortKey,
        order: Order,
    ) -> LibraryQuery {
        LibraryQuery {
            query: q.map(String::from),
            category,
            sort,
            order,
            offset: 0,
            limit: 100,
        }
    }

    #[test]
    fn pages_filter_sort_and_count_on_the_node() {
        let d = offered(70);
        let none = HashSet::new();
        let p = page(&d, &query(None, None, SortKey::Name, Order::Asc), &none);
        assert_eq!((p.total, p.items.len()), (70, 70));
        assert_eq!(p.items[0].name, "file 000000.mp3");
        let p = page(
            &d,
            &query(
                Some("LIVE"),
                Some(Category::Audio),
                SortKey::Size,
                Order::Desc,
            ),
            &none,
        );
        // Every 10th has the comment; of those, every 7th is audio.
        let names: Vec<&str> = p.items.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["file 000000.mp3"]);
        let audio = p
            .categories
            .iter()
            .find(|c| c.category == Category::Audio)
            .unwrap();
        assert_eq!(audio.count, 1);
        let mut q = query(None, None, SortKey::Size, Order::Desc);
        (q.offset, q.limit) = (5, 2);
        let p = page(&d, &q, &none);
        assert_eq!(
            p.items.iter().map(|v| v.size).collect::<Vec<_>>(),
            [64_000, 63_000]
        );
    }

    /// 100,000 contents: a page, and a search, take one pass each.
    #[test]
    fn a_hundred_thousand_contents_page_fast() {
        let d = offered(100_000);
        let none = HashSet::new();
        let t = Instant::now();
        let first = page(&d, &query(None, None, SortKey::Name, Order::Asc), &none);
        let first_took = t.elapsed();
        let t = Instant::now();
        let found = page(
            &d,
            &query(Some("099999"), None, SortKey::Name, Order::Asc),
            &none,
        );
        let search_took = t.elapsed();
        eprintln!("100,000 contents: first page {first_took:?}, search {search_took:?}");
        assert_eq!((first.total, first.items.len()), (100_000, 100));
        assert_eq!(found.items[0].name, "file 099999.pdf");
        // Generous bounds for a debug build on a loaded machine.
        assert!(first_took < Duration::from_secs(5) && search_took < Duration::from_secs(5));
    }
}
