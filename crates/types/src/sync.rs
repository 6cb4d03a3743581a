//! The one way ferry takes a lock. A lock whose holder panicked is taken anyway: a task's
//! panic is caught and reported, and the state behind every lock of ferry's is changed only
//! in steps that leave it whole (no step returns half-way to user code), so refusing the
//! lock would turn one failed task into a process that can no longer do anything.

use std::sync::{Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

/// [`Mutex::lock`], taken even if a holder panicked.
pub trait MutexExt<T> {
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T> MutexExt<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// [`RwLock::read`] and [`RwLock::write`], taken even if a holder panicked.
pub trait RwLockExt<T> {
    fn read_locked(&self) -> RwLockReadGuard<'_, T>;
    fn write_locked(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T> RwLockExt<T> for RwLock<T> {
    fn read_locked(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(|e| e.into_inner())
    }
    fn write_locked(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// [`Condvar::wait`] and [`Condvar::wait_timeout`], as [`MutexExt::locked`] takes the lock.
pub trait CondvarExt {
    fn wait_locked<'a, T>(&self, g: MutexGuard<'a, T>) -> MutexGuard<'a, T>;
    fn wait_timeout_locked<'a, T>(&self, g: MutexGuard<'a, T>, d: Duration) -> MutexGuard<'a, T>;
}

impl CondvarExt for Condvar {
    fn wait_locked<'a, T>(&self, g: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        self.wait(g).unwrap_or_else(|e| e.into_inner())
    }
    fn wait_timeout_locked<'a, T>(&self, g: MutexGuard<'a, T>, d: Duration) -> MutexGuard<'a, T> {
        self.wait_timeout(g, d).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_lock_whose_holder_panicked_is_taken_with_its_state() {
        let m = Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let mut g = m2.locked();
            *g = 2;
            panic!("a task panicked while holding it");
        })
        .join();
        assert!(m.is_poisoned());
        assert_eq!(*m.locked(), 2);
        let rw = RwLock::new(3);
        *rw.write_locked() += 1;
        assert_eq!(*rw.read_locked(), 4);
    }
}
