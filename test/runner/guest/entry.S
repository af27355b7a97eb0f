/* The tiny test guest's entry: the loader jumps to the 64-bit entry at load + 0x200 in
 * long mode with rsi = zero page. Returning from guest_main triple-faults the CPU (an
 * empty IDT and an invalid opcode; int3, which Linux uses, is not emulated by kvm_pvm), which is how the VM ends with reason "shutdown". */
	.section .text.entry, "ax"
	.code64
	.globl _start32
_start32:		/* the 32-bit entry at load + 0: never used by the runner */
	ud2
	.org 0x200
	.globl _start
_start:
	lea stack_top(%rip), %rsp
	mov %rsi, %rdi
	call guest_main
	.globl triple_fault
triple_fault:
	lidt null_idt(%rip)
	ud2
	jmp triple_fault

	.section .data
null_idt:
	.word 0
	.quad 0

	.section .bss
	.balign 16
	.space 16384
stack_top:

	.section .note.GNU-stack, "", @progbits
