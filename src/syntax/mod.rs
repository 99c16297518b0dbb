//! The front end's first step: text → syntax tree with spans.

pub mod ast;
mod parse;

pub use parse::parse_file;

#[cfg(test)]
mod tests;
