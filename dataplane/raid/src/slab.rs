//! A channel's table of requests in flight: preallocated, indexed by the tag the
//! members see, grown only past its high-water mark (never on a warm channel).

/// Entries a channel starts with.
pub const INITIAL: usize = 256;

pub struct Slab<T> {
    items: Vec<T>,
    free: Vec<u32>,
}

impl<T: Default> Slab<T> {
    pub fn new() -> Slab<T> {
        let mut s = Slab {
            items: Vec::with_capacity(INITIAL),
            free: Vec::with_capacity(INITIAL),
        };
        s.grow(INITIAL);
        s
    }

    fn grow(&mut self, by: usize) {
        let start = self.items.len();
        self.items.extend((0..by).map(|_| T::default()));
        self.free.reserve(by);
        for i in (start..start + by).rev() {
            self.free.push(i as u32);
        }
    }

    /// A free entry's index (reset to its default).
    pub fn alloc(&mut self) -> u32 {
        if self.free.is_empty() {
            let n = self.items.len();
            self.grow(n);
        }
        let i = self.free.pop().expect("grown above");
        self.items[i as usize] = T::default();
        i
    }

    pub fn free(&mut self, i: u32) {
        self.free.push(i);
    }

    pub fn get(&mut self, i: u32) -> &mut T {
        &mut self.items[i as usize]
    }

    pub fn at(&self, i: u32) -> &T {
        &self.items[i as usize]
    }
}
