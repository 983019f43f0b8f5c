//! Configuration: embedded defaults, the TOML file, command-line overrides, and validation.
