//! ATECC508A secure element: the I2C command protocol (`no_std`) and, with feature `emulator`,
//! a chip model. Filled by the `atecc` issue.
#![no_std]
