//! Reads from a target's memory with `process_vm_readv`: read-only, no ptrace stop, and a
//! failed read (an unmapped address, an exited process) is an error, never a crash.

pub struct Memory {
    pid: libc::pid_t,
}

impl Memory {
    pub fn new(pid: u32) -> Self {
        Self {
            pid: pid as libc::pid_t,
        }
    }

    /// Exactly `len` bytes at `address`.
    pub fn read(&self, address: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        if len == 0 {
            return Ok(buf);
        }
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: len,
        };
        let remote = libc::iovec {
            iov_base: address as *mut libc::c_void,
            iov_len: len,
        };
        // SAFETY: one local iovec over `buf`, which outlives the call; the remote one is only
        // read by the kernel, which checks it against the target's address space.
        let n = unsafe { libc::process_vm_readv(self.pid, &local, 1, &remote, 1, 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = n as usize;
        if n != len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{n} of {len} bytes readable at {address:#x}"),
            ));
        }
        Ok(buf)
    }

    pub fn read_u64(&self, address: u64) -> std::io::Result<u64> {
        let b = self.read(address, 8)?;
        Ok(u64::from_ne_bytes(b.try_into().expect("8 bytes")))
    }

    pub fn read_u32(&self, address: u64) -> std::io::Result<u32> {
        let b = self.read(address, 4)?;
        Ok(u32::from_ne_bytes(b.try_into().expect("4 bytes")))
    }
}
