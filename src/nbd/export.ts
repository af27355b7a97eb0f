/**
 * What the server serves: named exports of BlockDevices, with the transmission flags,
 * size constraints and block-status encodings the protocol derives from them.
 */
import { BlockDevice, Extent } from '../block/device';
import { ImageError } from '../block/errors';
import * as P from './protocol';

export interface NbdExport {
  name: string;
  description?: string;
  device: BlockDevice;
  readOnly: boolean;
  /** Every connection reaches this same device object: flushes are visible across connections. */
  multiConn: boolean;
  /** Allocation granularity of the device (cluster size), for size hints and fast zeroing. */
  granularity: number;
}

/** The transmission flags of an export; DF only when structured replies were negotiated. */
export function transmissionFlags(e: NbdExport, structured: boolean): number {
  let f = P.NBD_FLAG_HAS_FLAGS | P.NBD_FLAG_SEND_FLUSH | P.NBD_FLAG_SEND_FUA | P.NBD_FLAG_SEND_CACHE;
  if (e.readOnly) f |= P.NBD_FLAG_READ_ONLY;
  else f |= P.NBD_FLAG_SEND_TRIM | P.NBD_FLAG_SEND_WRITE_ZEROES | P.NBD_FLAG_SEND_FAST_ZERO;
  if (structured) f |= P.NBD_FLAG_SEND_DF;
  if (e.multiConn) f |= P.NBD_FLAG_CAN_MULTI_CONN;
  return f;
}

/** NBD_INFO_BLOCK_SIZE values: any alignment works; the granularity is the efficient size. */
export function blockSizes(e: NbdExport): { minimum: number; preferred: number; maximum: number } {
  const preferred = Math.min(Math.max(4096, e.granularity), P.MAX_PAYLOAD);
  return { minimum: 1, preferred, maximum: P.MAX_PAYLOAD };
}

/** The status flags of an extent in a metadata context (see protocol.ts for the contexts). */
export function extentStatus(context: string, e: Extent): number {
  if (context === P.CONTEXT_ALLOCATION_DEPTH) return e.kind === 'unallocated' ? 0 : e.depth + 1;
  if (e.kind !== 'data') return P.NBD_STATE_HOLE | P.NBD_STATE_ZERO;
  return e.readsZero ? P.NBD_STATE_ZERO : 0;
}

/** The NBD error value for a failure of the device. */
export function nbdErrno(err: unknown, isWrite: boolean): number {
  if (!(err instanceof ImageError)) return P.NBD_EIO;
  switch (err.code) {
    case 'READ_ONLY':
      return P.NBD_EPERM;
    case 'NO_SPACE':
      return P.NBD_ENOSPC;
    case 'OUT_OF_RANGE':
      return isWrite ? P.NBD_ENOSPC : P.NBD_EINVAL;
    case 'INVALID_ARGUMENT':
      return P.NBD_EINVAL;
    case 'UNSUPPORTED':
      return P.NBD_ENOTSUP;
    default:
      return P.NBD_EIO;
  }
}

export const CONTEXTS = [P.CONTEXT_BASE_ALLOCATION, P.CONTEXT_ALLOCATION_DEPTH];
