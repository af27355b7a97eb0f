/**
 * VDI UUIDs are IPRT RTUUIDs stored as in memory on x86: time_low, time_mid and
 * time_hi_and_version little-endian, the last eight bytes as they are (qemu's
 * qemu_uuid_bswap converts them). Text form is RFC 4122's.
 */
import { randomUUID } from 'node:crypto';
import { u8 } from '../../io/bytes';

const UUID_BYTES = 16;
/** Bytes 0-3, 4-5 and 6-7 are swapped between the RFC order and IPRT's. */
const SWAP: number[] = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];

export function uuidFromDisk(b: Uint8Array, o: number): string {
  u8(b, o + UUID_BYTES - 1); // bounds check
  const rfc = SWAP.map((i) => b[o + i]);
  const hex = Buffer.from(rfc).toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

export function uuidToDisk(b: Uint8Array, o: number, uuid: string): void {
  const rfc = Buffer.from(uuid.replace(/-/g, ''), 'hex');
  if (rfc.length !== UUID_BYTES) throw new RangeError(`invalid UUID '${uuid}'`);
  u8(b, o + UUID_BYTES - 1);
  for (let i = 0; i < UUID_BYTES; i++) b[o + i] = rfc[SWAP[i]];
}

export const newUuid = (): string => randomUUID();
