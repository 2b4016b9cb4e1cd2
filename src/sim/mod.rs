//! Device simulators: product code that speaks each real wire format with its known quirks and
//! scriptable faults. Tests, the demo and `avwarden simulate` all use them.
