/**
 * NBD protocol constants and message encoders, named as in NetworkBlockDevice/nbd doc/proto.md
 * (fixed newstyle negotiation, simple and structured replies). All fields are big-endian.
 */
import { setBe16, setBe32, setBe64 } from '../io/bytes';

// Handshake ("Newstyle negotiation")
export const NBDMAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
/** Magic of every option reply ("Fixed newstyle negotiation"). */
export const REPLY_MAGIC = 0x3e889045565a9n;
export const DEFAULT_PORT = 10809;

// Handshake flags (server) and client flags
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;

// Transmission flags
export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_SEND_DF = 1 << 7;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
export const NBD_FLAG_SEND_CACHE = 1 << 10;
export const NBD_FLAG_SEND_FAST_ZERO = 1 << 11;

// Options
export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_ABORT = 2;
export const NBD_OPT_LIST = 3;
export const NBD_OPT_STARTTLS = 5;
export const NBD_OPT_INFO = 6;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;
export const NBD_OPT_LIST_META_CONTEXT = 9;
export const NBD_OPT_SET_META_CONTEXT = 10;

// Option replies; errors have bit 31 set
export const NBD_REP_ACK = 1;
export const NBD_REP_SERVER = 2;
export const NBD_REP_INFO = 3;
export const NBD_REP_META_CONTEXT = 4;
export const NBD_REP_FLAG_ERROR = 2 ** 31;
export const NBD_REP_ERR_UNSUP = NBD_REP_FLAG_ERROR + 1;
export const NBD_REP_ERR_POLICY = NBD_REP_FLAG_ERROR + 2;
export const NBD_REP_ERR_INVALID = NBD_REP_FLAG_ERROR + 3;
export const NBD_REP_ERR_TLS_REQD = NBD_REP_FLAG_ERROR + 5;
export const NBD_REP_ERR_UNKNOWN = NBD_REP_FLAG_ERROR + 6;
export const NBD_REP_ERR_SHUTDOWN = NBD_REP_FLAG_ERROR + 7;

// NBD_REP_INFO types
export const NBD_INFO_EXPORT = 0;
export const NBD_INFO_NAME = 1;
export const NBD_INFO_DESCRIPTION = 2;
export const NBD_INFO_BLOCK_SIZE = 3;

// Transmission: request and replies
export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;
export const REQUEST_HEADER_SIZE = 28;
export const SIMPLE_REPLY_SIZE = 16;
export const STRUCTURED_HEADER_SIZE = 20;
export const OPTION_HEADER_SIZE = 16;
export const OPTION_REPLY_HEADER_SIZE = 20;

// Commands
export const NBD_CMD_READ = 0;
export const NBD_CMD_WRITE = 1;
export const NBD_CMD_DISC = 2;
export const NBD_CMD_FLUSH = 3;
export const NBD_CMD_TRIM = 4;
export const NBD_CMD_CACHE = 5;
export const NBD_CMD_WRITE_ZEROES = 6;
export const NBD_CMD_BLOCK_STATUS = 7;

// Command flags
export const NBD_CMD_FLAG_FUA = 1 << 0;
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
export const NBD_CMD_FLAG_DF = 1 << 2;
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;

// Structured reply flags and types
export const NBD_REPLY_FLAG_DONE = 1 << 0;
export const NBD_REPLY_TYPE_NONE = 0;
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
export const NBD_REPLY_TYPE_ERROR = 2 ** 15 + 1;
export const NBD_REPLY_TYPE_ERROR_OFFSET = 2 ** 15 + 2;
/** "All error chunk types have bit 15 set." */
export const NBD_REPLY_TYPE_ERROR_BIT = 2 ** 15;

// Error values
export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;
export const NBD_EOVERFLOW = 75;
export const NBD_ENOTSUP = 95;
export const NBD_ESHUTDOWN = 108;

// base:allocation flags
export const NBD_STATE_HOLE = 1 << 0;
export const NBD_STATE_ZERO = 1 << 1;

export const CONTEXT_BASE_ALLOCATION = 'base:allocation';
/** qemu's context (qemu docs/interop/nbd.rst): 0 unallocated, 1 the active layer, 2 its backing file, … */
export const CONTEXT_ALLOCATION_DEPTH = 'qemu:allocation-depth';

/** Size constraints ("Size constraints"): the largest READ or WRITE payload img accepts. */
export const MAX_PAYLOAD = 32 << 20;
/** Strings (names, descriptions, error messages) are at most 4096 bytes. */
export const MAX_STRING = 4096;
/** A BLOCK_STATUS chunk carries at most 2^20 descriptors. */
export const MAX_EXTENTS = 1 << 20;

/** An option reply: magic, option, type, length, then `data`. */
export function optionReply(option: number, type: number, data: Uint8Array = new Uint8Array(0)): Buffer {
  const b = Buffer.alloc(OPTION_REPLY_HEADER_SIZE + data.byteLength);
  setBe64(b, 0, REPLY_MAGIC);
  setBe32(b, 8, option);
  setBe32(b, 12, type);
  setBe32(b, 16, data.byteLength);
  b.set(data, OPTION_REPLY_HEADER_SIZE);
  return b;
}

/** An option request header followed by its data (client side). */
export function optionRequest(option: number, data: Uint8Array = new Uint8Array(0)): Buffer {
  const b = Buffer.alloc(OPTION_HEADER_SIZE + data.byteLength);
  setBe64(b, 0, IHAVEOPT);
  setBe32(b, 8, option);
  setBe32(b, 12, data.byteLength);
  b.set(data, OPTION_HEADER_SIZE);
  return b;
}

export function simpleReply(error: number, cookie: bigint): Buffer {
  const b = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE);
  setBe32(b, 0, NBD_SIMPLE_REPLY_MAGIC);
  setBe32(b, 4, error);
  setBe64(b, 8, cookie);
  return b;
}

/** A structured reply chunk header with room for `extra` payload bytes the caller fills in after it. */
export function structuredHeader(flags: number, type: number, cookie: bigint, length: number, extra = 0): Buffer {
  const b = Buffer.allocUnsafe(STRUCTURED_HEADER_SIZE + extra);
  setBe32(b, 0, NBD_STRUCTURED_REPLY_MAGIC);
  setBe16(b, 4, flags);
  setBe16(b, 6, type);
  setBe64(b, 8, cookie);
  setBe32(b, 16, length);
  return b;
}

/** A request header (client side). */
export function requestHeader(flags: number, type: number, cookie: bigint, offset: number, length: number): Buffer {
  const b = Buffer.allocUnsafe(REQUEST_HEADER_SIZE);
  setBe32(b, 0, NBD_REQUEST_MAGIC);
  setBe16(b, 4, flags);
  setBe16(b, 6, type);
  setBe64(b, 8, cookie);
  setBe64(b, 16, offset);
  setBe32(b, 24, length);
  return b;
}

/** A 32-bit length followed by the UTF-8 bytes of `s`. */
export function lengthPrefixed(s: string): Buffer {
  const bytes = Buffer.from(s, 'utf8');
  const b = Buffer.alloc(4 + bytes.byteLength);
  setBe32(b, 0, bytes.byteLength);
  b.set(bytes, 4);
  return b;
}
