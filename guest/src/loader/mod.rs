//! What exec needs before any memory is touched: the ELF headers of a
//! program and its interpreter (`elf`), and the initial stack with its
//! arguments, environment and auxiliary vector (`stack`). Plain parsing and
//! layout, unit-tested on the host; the kernel maps and fills the memory.

pub mod elf;
pub mod stack;
