//! What the CPU can do, detected once.

use std::sync::OnceLock;

/// The instruction sets the native kernels are built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 with AVX512-BF16 (`vdpbf16ps`): f32 and bf16 kernels.
    Avx512Bf16,
    /// AVX-512 (F, BW, VL, DQ): the f32 kernel; bf16 weights are multiplied by the portable
    /// kernel (or AMX where present).
    Avx512,
    /// AVX2 with FMA: the f32 matrix kernel of its own, the rest compiler-vectorised portable
    /// code.
    Avx2,
    /// Anything else.
    Portable,
}

impl Isa {
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            if std::env::var_os("SHOAL_FORCE_PORTABLE_KERNELS").is_some() {
                return Isa::Portable;
            }
            #[cfg(target_arch = "x86_64")]
            {
                // The multiversioned code is compiled for F, BW, VL and DQ together (every
                // AVX-512 server CPU since Skylake-SP and Zen 4 has all four), with AVX2 and FMA.
                if is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512dq")
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                {
                    if is_x86_feature_detected!("avx512bf16") {
                        return Isa::Avx512Bf16;
                    }
                    return Isa::Avx512;
                }
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    return Isa::Avx2;
                }
            }
            Isa::Portable
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512Bf16 => "avx512+bf16",
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }

    /// Whether bf16 products run on dedicated instructions (otherwise they are emulated, slower
    /// than f32).
    pub fn has_bf16(self) -> bool {
        self == Isa::Avx512Bf16
    }
}

/// Define `$name(args)` that runs `$body` compiled for the best instruction set the CPU has:
/// the body is plain Rust, vectorised by the compiler for each target.
///
/// `unsafe fn` is accepted too (for bodies that dereference pointers the caller passes): the
/// generated function is then `unsafe` with the same contract, which its doc comment must state
/// under `# Safety`; the body still needs `unsafe` blocks of its own for what it does.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis unsafe fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis unsafe fn $name($($arg: $ty),*) {
            #[allow(clippy::too_many_arguments)]
            #[inline(always)]
            unsafe fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx512($($arg: $ty),*) {
                // SAFETY: passed on from the caller of `avx512`, which upholds `body`'s contract.
                unsafe { body($($arg),*) }
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx2($($arg: $ty),*) {
                // SAFETY: as above.
                unsafe { body($($arg),*) }
            }
            match $crate::native::cpu::Isa::detect() {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the CPU has these features (detected at run time), and our caller
                // upholds this function's contract, which is `body`'s.
                $crate::native::cpu::Isa::Avx512Bf16 | $crate::native::cpu::Isa::Avx512 => unsafe { avx512($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as above.
                $crate::native::cpu::Isa::Avx2 => unsafe { avx2($($arg),*) },
                // SAFETY: our caller upholds this function's contract, which is `body`'s.
                _ => unsafe { body($($arg),*) },
            }
        }
    };
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[allow(clippy::too_many_arguments)]
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx512($($arg: $ty),*) { body($($arg),*) }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx2($($arg: $ty),*) { body($($arg),*) }
            match $crate::native::cpu::Isa::detect() {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the CPU has these features (detected at run time).
                $crate::native::cpu::Isa::Avx512Bf16 | $crate::native::cpu::Isa::Avx512 => unsafe { avx512($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as above.
                $crate::native::cpu::Isa::Avx2 => unsafe { avx2($($arg),*) },
                _ => body($($arg),*),
            }
        }
    };
}
pub(crate) use multiversion;

#[cfg(test)]
mod tests {
    use super::*;

    /// What detection picked, checked against the features one by one (valgrind, for one, hides
    /// AVX-512 from the program: detection must then pick a clone the CPU it emulates runs).
    #[test]
    fn detected_isa_matches_the_cpu_features() {
        let isa = Isa::detect();
        // scripts/check-kernels-valgrind.sh and check-kernels-asan.sh print this line.
        println!("shoal kernels: isa {}", isa.name());
        if std::env::var_os("SHOAL_FORCE_PORTABLE_KERNELS").is_some() {
            assert_eq!(isa, Isa::Portable);
            return;
        }
        #[cfg(target_arch = "x86_64")]
        {
            let avx512 = is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma");
            let bf16 = is_x86_feature_detected!("avx512bf16");
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            match isa {
                Isa::Avx512Bf16 => assert!(avx512 && bf16),
                Isa::Avx512 => assert!(avx512 && !bf16),
                Isa::Avx2 => assert!(!avx512 && avx2),
                Isa::Portable => assert!(!avx2),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        assert_eq!(isa, Isa::Portable);
    }
}
