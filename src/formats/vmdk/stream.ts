/**
 * One-pass writer of stream-optimized extents (Virtual Disk Format 1.1, §"Stream-Optimized
 * Compressed Sparse Extents"): header and descriptor, then each grain as a marker (LBA, size)
 * and its zlib bytes, each grain table after its grains behind a GT marker, then the grain
 * directory behind a GD marker, a footer (the header with the real gdOffset) and an
 * end-of-stream marker. Nothing is ever rewritten, so the sink can be a pipe; memory is one
 * grain table and the directory (4 bytes per 32 MiB of disk).
 */
import { compressorPool } from '../../block/compress';
import { ImageError } from '../../block/errors';
import { setLe32, setLe64 } from '../../io/bytes';
import { ByteSink } from '../../io/sink';
import * as C from './constants';
import { gdEntries, gtSectors, markerSector, serializeSparseHeader, SparseHeader } from './sparse-header';

/** The header of a stream-optimized extent of `capacity` sectors, as VMware writes it (version 3). */
export function streamHeader(capacity: number): SparseHeader {
  return {
    version: 3,
    flags: C.FLAG_VALID_NEWLINE_TEST | C.FLAG_COMPRESSED | C.FLAG_MARKERS,
    capacity,
    grainSize: C.DEFAULT_GRAIN_SECTORS,
    descriptorOffset: C.EMBEDDED_DESC_OFFSET,
    descriptorSize: C.EMBEDDED_DESC_SECTORS,
    numGTEsPerGT: C.DEFAULT_GTES_PER_GT,
    rgdOffset: 0,
    gdOffset: null,
    overHead: C.DEFAULT_GRAIN_SECTORS,
    uncleanShutdown: false,
    compressAlgorithm: C.COMPRESSION_DEFLATE,
  };
}

/** Header sector, descriptor and padding up to the first grain (overHead sectors). */
export function streamPreamble(h: SparseHeader, descriptor: string): Uint8Array {
  const text = Buffer.from(descriptor, 'utf8');
  if (text.byteLength > h.descriptorSize * C.SECTOR) {
    throw new ImageError('INVALID_ARGUMENT', `descriptor (${text.byteLength} bytes) does not fit in ${h.descriptorSize} sectors`);
  }
  const out = new Uint8Array(h.overHead * C.SECTOR);
  out.set(serializeSparseHeader(h), 0);
  out.set(text, h.descriptorOffset * C.SECTOR);
  return out;
}

/** Grains are stored compressed whatever the ratio (the format has no uncompressed grain). */
const NO_LIMIT = Number.MAX_SAFE_INTEGER;

export class StreamWriter {
  private chain: Promise<void> = Promise.resolve();
  /** The lowest grain a write may still name (grains come in ascending order). */
  private nextGrain = 0;
  private readonly gd: Uint32Array;
  private gt: { index: number; table: Uint8Array } | null = null;
  private readonly gtBytes: number;
  private finished = false;

  /** `sink` must already hold the preamble (its position is overHead sectors). */
  constructor(
    private readonly sink: ByteSink,
    private readonly header: SparseHeader,
    private readonly name: string,
  ) {
    this.gd = new Uint32Array(gdEntries(header));
    this.gtBytes = gtSectors(header) * C.SECTOR;
  }

  /** Bytes written so far (the final size once finished). */
  get end(): number {
    return this.sink.position;
  }

  get grainBytes(): number {
    return this.header.grainSize * C.SECTOR;
  }

  /** Virtual size in bytes. */
  get size(): number {
    return this.header.capacity * C.SECTOR;
  }

  /**
   * Queues whole grains (the last may be short at the end of the disk) in call order, which
   * must ascend; they are compressed on the worker pool meanwhile. `ownBuffer`: `data` is not
   * a view of a larger buffer, so it can go to a worker without a copy.
   */
  writeData(offset: number, data: Uint8Array, ownBuffer = false): Promise<void> {
    const g = this.grainBytes;
    if (offset % g !== 0 || (data.byteLength % g !== 0 && offset + data.byteLength !== this.size)) {
      return Promise.reject(new ImageError('UNSUPPORTED', `stream-optimized images take whole grains of ${g} bytes (write at ${offset}, ${data.byteLength} bytes)`, { file: this.name }));
    }
    const writes: Promise<void>[] = [];
    for (let o = 0; o < data.byteLength; o += g) {
      const part = data.subarray(o, o + g);
      const own = ownBuffer && data.byteLength <= g ? part : new Uint8Array(part);
      const payload = compressorPool().compress('zlib', own, NO_LIMIT) as Promise<Uint8Array>;
      writes.push(this.writeGrain((offset + o) / g, payload));
    }
    return Promise.all(writes).then(() => undefined);
  }

  /**
   * Queues grain `grain` whose zlib bytes `payload` will give; must be called in ascending
   * grain order (the append order), though payloads may settle in any order.
   */
  writeGrain(grain: number, payload: Promise<Uint8Array>): Promise<void> {
    if (this.finished) return Promise.reject(new ImageError('INVALID_ARGUMENT', 'the stream is already finished', { file: this.name }));
    if (grain < this.nextGrain) {
      payload.catch(() => undefined);
      return Promise.reject(
        new ImageError('UNSUPPORTED', `stream-optimized images are written in one pass: grain ${grain} comes after grain ${this.nextGrain - 1}`, { file: this.name }),
      );
    }
    this.nextGrain = grain + 1;
    this.chain = this.chain.then(async () => this.appendGrain(grain, await payload));
    return this.chain;
  }

  /** Appends the last grain table, the directory, the footer and the end-of-stream marker. */
  async finish(): Promise<void> {
    if (this.finished) return this.chain;
    this.finished = true;
    this.chain = this.chain.then(async () => {
      await this.endTable();
      const gdBytes = Math.ceil((this.gd.length * 4) / C.SECTOR) * C.SECTOR;
      await this.sink.append(markerSector(gdBytes / C.SECTOR, C.MARKER_GD));
      const gdOffset = this.sink.position / C.SECTOR;
      const gd = new Uint8Array(gdBytes);
      for (let i = 0; i < this.gd.length; i++) setLe32(gd, i * 4, this.gd[i]);
      await this.sink.append(gd);
      await this.sink.append(markerSector(1, C.MARKER_FOOTER));
      await this.sink.append(serializeSparseHeader({ ...this.header, gdOffset }));
      await this.sink.append(markerSector(0, C.MARKER_EOS));
    });
    return this.chain;
  }

  private async appendGrain(grain: number, payload: Uint8Array): Promise<void> {
    const index = Math.floor(grain / this.header.numGTEsPerGT);
    if (this.gt && this.gt.index !== index) await this.endTable();
    this.gt ??= { index, table: new Uint8Array(this.gtBytes) };
    const record = new Uint8Array(Math.ceil((C.GRAIN_MARKER_SIZE + payload.byteLength) / C.SECTOR) * C.SECTOR);
    setLe64(record, 0, grain * this.header.grainSize);
    setLe32(record, 8, payload.byteLength);
    record.set(payload, C.GRAIN_MARKER_SIZE);
    if (this.sink.position + record.byteLength > C.MAX_EXTENT_SECTORS * C.SECTOR) {
      throw new ImageError('NO_SPACE', 'the stream is full (grain offsets are 32-bit sector numbers: 2 TiB)', { file: this.name });
    }
    setLe32(this.gt.table, (grain % this.header.numGTEsPerGT) * 4, this.sink.position / C.SECTOR);
    await this.sink.append(record);
  }

  private async endTable(): Promise<void> {
    if (!this.gt) return;
    await this.sink.append(markerSector(this.gtBytes / C.SECTOR, C.MARKER_GT));
    this.gd[this.gt.index] = this.sink.position / C.SECTOR;
    await this.sink.append(this.gt.table);
    this.gt = null;
  }
}
