//! The features' own state (per-task, per-thread), kept under the agent's one lock beside the
//! core model so a marker updates the process table and its task atomically, without the
//! core naming any feature: each feature stores and fetches its state by type.

use std::{
    any::{Any, TypeId},
    collections::HashMap,
};

#[derive(Default)]
pub struct Features(HashMap<TypeId, Box<dyn Any + Send + Sync>>);

impl Features {
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) {
        self.0.insert(TypeId::of::<T>(), Box::new(value));
    }

    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.0.get(&TypeId::of::<T>())?.downcast_ref()
    }

    /// The feature's state, made with its defaults the first time.
    pub fn get_mut<T: Any + Send + Sync + Default>(&mut self) -> &mut T {
        self.0
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Box::new(T::default()))
            .downcast_mut()
            .expect("entries are keyed by their own type")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default, Debug, PartialEq)]
    struct Count(u32);

    #[test]
    fn each_type_has_one_entry_made_on_first_use() {
        let mut f = Features::default();
        assert_eq!(f.get::<Count>(), None);
        f.get_mut::<Count>().0 += 2;
        f.get_mut::<Count>().0 += 1;
        assert_eq!(f.get::<Count>(), Some(&Count(3)));
        f.insert(Count(7));
        assert_eq!(f.get::<Count>(), Some(&Count(7)));
    }
}
