{
  "targets": [
    {
      "target_name": "img_native",
      "sources": ["native/sys.cc", "native/fuse.cc", "native/fuse_mount.cc", "native/splice_writer.cc", "native/runner/kvm.cc", "native/runner/boot.cc", "native/runner/uart.cc",
                  "native/runner/pci.cc", "native/runner/virtio_blk.cc", "native/runner/backend_file.cc",
                  "native/runner/backend_nbd.cc", "native/runner/machine.cc", "native/runner/napi_vm.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall"]
    }
  ]
}
