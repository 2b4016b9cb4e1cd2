//! Projector drivers: PJLink over TCP, Epson ESC/VP21 over RS-232.

pub mod escvp21;
pub mod pjlink;
