//! Seccomp: actions, architectures and syscall tables, BPF generation and installation.

pub mod action;
pub mod arch;
pub mod args;
pub mod bpf;
pub mod codegen;
pub mod install;

pub use action::Action;
pub use arch::Arch;
pub use codegen::{CmpOp, Cond, FilterSpec, SyscallRule, generate};
