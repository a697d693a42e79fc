//! The entropy source behind getrandom and AT_RANDOM.

use crate::arch;

/// xorshift64*, seeded from RDRAND when present, else from the clocks.
pub struct Rng {
    state: u64,
    hardware: bool,
}

impl Rng {
    pub fn new(seed: u64, hardware: bool) -> Self {
        Self {
            state: seed | 1,
            hardware,
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        if self.hardware {
            if let Some(v) = arch::rdrand() {
                return v;
            }
        }
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}
