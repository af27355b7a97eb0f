/**
 * Sequential byte sinks: where a one-pass writer (a stream-optimized vmdk) puts its bytes, in
 * order, never seeking back. A file sink writes at a running position; a descriptor sink
 * writes to a pipe or whatever stdout is, so the same writer produces the same bytes for both.
 */
import * as fs from 'node:fs';
import { fromSystemError } from '../block/errors';
import { HostFile } from './host-file';

const PIPE_RETRY_MS = 2;

export interface ByteSink {
  /** Bytes appended so far (plus the starting position). */
  readonly position: number;
  append(data: Uint8Array): Promise<void>;
}

/** Appends to a HostFile from `start`; the file is truncated at the end by the owner. */
export class FileSink implements ByteSink {
  constructor(
    private readonly file: HostFile,
    public position: number,
  ) {}

  async append(data: Uint8Array): Promise<void> {
    const at = this.position;
    this.position += data.byteLength;
    await this.file.write(at, data);
  }
}

/** Appends to an open descriptor without seeking (fd 1 for '-'): pipes, terminals, files. */
export class FdSink implements ByteSink {
  position = 0;

  constructor(
    private readonly fd: number,
    private readonly name: string,
  ) {}

  async append(data: Uint8Array): Promise<void> {
    this.position += data.byteLength;
    let done = 0;
    while (done < data.byteLength) {
      done += await new Promise<number>((resolve, reject) =>
        fs.write(this.fd, data, done, data.byteLength - done, null, (err, n) => {
          // A pipe Node made non-blocking (stdout once touched) is full: try again shortly.
          if (err?.code === 'EAGAIN') setTimeout(() => resolve(0), PIPE_RETRY_MS);
          else if (err) reject(fromSystemError(err, this.name));
          else resolve(n);
        }),
      );
    }
  }
}
