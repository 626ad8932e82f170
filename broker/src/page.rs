//! A page of a long list: the first `limit` items in an order, chosen in one pass that keeps
//! only the page (a heap of `limit`), so listing a page of a million connections or retained
//! messages holds the page, not the million (`session list`, the console).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// The first `limit` of `items` by `cmp`, in order (0: all of them, sorted).
pub(crate) fn first_by<T>(
    items: impl IntoIterator<Item = T>,
    limit: usize,
    cmp: impl Fn(&T, &T) -> Ordering,
) -> Vec<T> {
    if limit == 0 {
        let mut all: Vec<T> = items.into_iter().collect();
        all.sort_unstable_by(&cmp);
        return all;
    }
    // A max-heap of the first `limit` seen so far: its top is the one to drop for a smaller.
    let mut best = BinaryHeap::with_capacity(limit + 1);
    for item in items {
        let item = By(item, &cmp);
        if best.len() < limit {
            best.push(item);
        } else if best.peek().is_some_and(|top| item < *top) {
            best.pop();
            best.push(item);
        }
    }
    best.into_sorted_vec().into_iter().map(|b| b.0).collect()
}

/// An item ordered by the page's comparison.
struct By<'c, T, F>(T, &'c F);

impl<T, F: Fn(&T, &T) -> Ordering> Ord for By<'_, T, F> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.1)(&self.0, &other.0)
    }
}

impl<T, F: Fn(&T, &T) -> Ordering> PartialOrd for By<'_, T, F> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T, F: Fn(&T, &T) -> Ordering> PartialEq for By<'_, T, F> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl<T, F: Fn(&T, &T) -> Ordering> Eq for By<'_, T, F> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_in_order_whatever_order_they_come_in() {
        let items = [7, 3, 9, 0, 5, 1, 8, 2, 6, 4];
        assert_eq!(first_by(items, 3, |a, b| a.cmp(b)), [0, 1, 2]);
        assert_eq!(
            first_by(items, 0, |a, b| a.cmp(b)),
            (0..10).collect::<Vec<_>>()
        );
        assert_eq!(
            first_by(items, 20, |a, b| b.cmp(a)),
            (0..10).rev().collect::<Vec<_>>()
        );
        assert!(first_by(Vec::<u8>::new(), 5, |a, b| a.cmp(b)).is_empty());
    }
}
