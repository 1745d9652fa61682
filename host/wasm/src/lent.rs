//! A stream's head (or trailers) while a callback may see it.
//!
//! Every headers callback, and a stream's last callbacks, put the head (a few hundred
//! bytes) in the store and take it back after. Moving it through an `Option` copied it four
//! times per callback, each a `memcpy` call, and built an empty head to leave behind.
//! Swapping it with the empty head the store keeps takes plain loads and stores (about 56
//! instructions for a request head), no `memcpy` call, both ways.

/// A head in the store's reach during a callback, or the empty head it keeps in between.
#[derive(Debug, Default)]
pub(crate) struct Lent<H> {
    head: H,
    /// `head` is the stream's, lent: the callback may see it.
    lent: bool,
}

impl<H> Lent<H> {
    /// The lent head, if a head is lent.
    pub(crate) fn get(&self) -> Option<&H> {
        self.lent.then_some(&self.head)
    }

    /// The lent head, to change, if a head is lent.
    pub(crate) fn get_mut(&mut self) -> Option<&mut H> {
        if self.lent {
            Some(&mut self.head)
        } else {
            None
        }
    }

    /// Lends `head`: it is swapped with what the store held, which `head` keeps until
    /// [`Lent::give_back`] swaps them again.
    pub(crate) fn lend(&mut self, head: &mut H) {
        std::mem::swap(&mut self.head, head);
        self.lent = true;
    }

    /// Gives the lent head (as the callback left it) back into `head`, which was the one
    /// [`Lent::lend`] left there. Nothing changes when no head is lent.
    pub(crate) fn give_back(&mut self, head: &mut H) {
        if self.lent {
            std::mem::swap(&mut self.head, head);
            self.lent = false;
        }
    }

    /// Keeps the lent head out of sight (and in place), until [`Lent::show`]. Whether one
    /// was lent.
    pub(crate) fn hide(&mut self) -> bool {
        std::mem::replace(&mut self.lent, false)
    }

    /// Shows a head that [`Lent::hide`] hid.
    pub(crate) fn show(&mut self) {
        self.lent = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lent_head_is_seen_changed_and_given_back() {
        let mut store: Lent<Vec<u8>> = Lent::default();
        assert!(store.get().is_none());
        let mut head = b"GET".to_vec();
        store.lend(&mut head);
        assert!(
            head.is_empty(),
            "the store's empty head is left in its place"
        );
        store.get_mut().expect("lent").push(b'!');
        assert!(store.hide());
        assert!(store.get().is_none(), "hidden");
        store.show();
        assert_eq!(store.get().map(Vec::as_slice), Some(&b"GET!"[..]));
        store.give_back(&mut head);
        assert_eq!(head, b"GET!");
        assert!(store.get().is_none());
        // Given back once only: a second call leaves `head` alone.
        store.give_back(&mut head);
        assert_eq!(head, b"GET!");
    }
}
