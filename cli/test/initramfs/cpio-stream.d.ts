// Just enough of cpio-stream's (untyped, CommonJS) extract API for the tests.
declare module 'cpio-stream' {
  import type {Readable, Writable} from 'node:stream'

  export interface CpioStreamHeader {
    name: string
    mode: number
    uid: number
    gid: number
    nlink: number
    ino: number
    mtime: Date
    size: number
    rdevmajor: number
    rdevminor: number
    type: 'file' | 'directory' | 'symlink' | 'socket' | 'block-device' | 'character-device' | 'fifo' | false
    linkname?: string
  }

  export interface Extract extends Writable {
    on(event: 'entry', listener: (header: CpioStreamHeader, stream: Readable, next: (err?: Error) => void) => void): this
    on(event: 'finish' | 'close', listener: () => void): this
    on(event: 'error', listener: (err: Error) => void): this
  }

  const cpio: {extract(): Extract}
  export default cpio
}
