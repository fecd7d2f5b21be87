/* Test-only stand-in for bcryptprimitives.dll, which wine 8 lacks.
 *
 * Rust's std (>= 1.78) imports ProcessPrng from bcryptprimitives.dll; without the DLL, wine
 * refuses to load any Rust program (status c0000135). Real Windows 10 and later have it, so
 * nothing of this ships: scripts/build-windows builds it into the test wine prefix only.
 * It forwards to RtlGenRandom (SystemFunction036 in advapi32), which wine implements. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG chunk = length > 0x7fffffff ? 0x7fffffff : (ULONG)length;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
