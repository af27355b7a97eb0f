/**
 * Typed errors. Every failure a user can see is an ImageError with a stable `code`;
 * the CLI maps codes to exit statuses and prints `message` as one line.
 */
export type ErrorCode =
  | 'INVALID_ARGUMENT' // a caller's option or value is wrong
  | 'NOT_FOUND' // a file (image, backing file) does not exist
  | 'UNKNOWN_FORMAT' // probing found no format, or a format name is unknown
  | 'BAD_HEADER' // a header field is out of range or inconsistent
  | 'CORRUPT' // metadata points somewhere impossible
  | 'UNSUPPORTED' // valid image using a feature img does not implement
  | 'READ_ONLY' // write to an image opened read-only
  | 'OUT_OF_RANGE' // request beyond the end of the device
  | 'NO_SPACE' // host file system is full
  | 'IO'; // the host reported an I/O error

export interface ErrorDetail {
  file?: string;
  field?: string;
  value?: unknown;
  cause?: unknown;
}

export class ImageError extends Error {
  readonly code: ErrorCode;
  readonly file?: string;
  readonly field?: string;
  readonly value?: unknown;

  constructor(code: ErrorCode, message: string, detail: ErrorDetail = {}) {
    super(detail.file ? `${detail.file}: ${message}` : message, { cause: detail.cause });
    this.name = 'ImageError';
    this.code = code;
    this.file = detail.file;
    this.field = detail.field;
    this.value = detail.value;
  }
}

/** A header field has a value img refuses: the message names the field and the value. */
export function badField(file: string, field: string, value: unknown, why: string): ImageError {
  const shown = typeof value === 'bigint' ? `0x${value.toString(16)}` : String(value);
  return new ImageError('BAD_HEADER', `invalid ${field} ${shown}: ${why}`, { file, field, value });
}

/** Wraps a Node system error (ENOENT, ENOSPC, EIO, …) into an ImageError naming the file. */
export function fromSystemError(err: unknown, file: string): unknown {
  if (err instanceof ImageError || !(err instanceof Error)) return err;
  const code = (err as NodeJS.ErrnoException).code;
  switch (code) {
    case 'ENOENT':
      return new ImageError('NOT_FOUND', 'no such file', { file, cause: err });
    case 'ENOSPC':
    case 'EDQUOT':
      return new ImageError('NO_SPACE', 'no space left on the host file system', { file, cause: err });
    case 'EACCES':
    case 'EPERM':
    case 'EROFS':
      return new ImageError('READ_ONLY', `permission denied (${code})`, { file, cause: err });
    case 'EISDIR':
      return new ImageError('INVALID_ARGUMENT', 'is a directory', { file, cause: err });
    default:
      return code ? new ImageError('IO', `${err.message}`, { file, cause: err }) : err;
  }
}
