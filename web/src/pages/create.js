// Create a VM in libvirt (createVm): name, memory, vCPUs, and a disk over a base image of the
// host's image directory, or a kernel and initrd to boot. The creator becomes the owner; the
// new VM's page opens once it exists.
import { Q, gql } from '../api.js';
import { h, replace } from '../dom.js';
import { errorText } from '../power.js';

export function createVmPage() {
  const status = h('p', { class: 'muted', dataset: { testid: 'hypervisor-state' } }, 'Asking the host about libvirt…');
  const flash = h('div', { class: 'result-slot', 'aria-live': 'polite' });
  const say = (text, isError) => replace(flash, h('p', { class: isError ? 'error' : 'notice', role: isError ? 'alert' : null }, text));

  const name = h('input', { name: 'name', required: true, maxlength: 128, placeholder: 'web-01', autocomplete: 'off' });
  const memory = h('input', { name: 'memoryMib', type: 'number', min: 16, step: 1, value: '1024', required: true, class: 'narrow' });
  const vcpus = h('input', { name: 'vcpus', type: 'number', min: 1, max: 256, step: 1, value: '1', required: true, class: 'narrow' });
  const baseImage = h('select', { name: 'baseImage' }, h('option', { value: '' }, '— none —'));
  const kernel = h('input', { name: 'kernel', placeholder: 'vmlinuz', autocomplete: 'off' });
  const initrd = h('input', { name: 'initrd', placeholder: 'initrd.img', autocomplete: 'off' });
  const cmdline = h('input', { name: 'cmdline', placeholder: 'console=ttyS0', autocomplete: 'off', class: 'wide' });
  const start = h('input', { name: 'start', type: 'checkbox', checked: true });
  const submit = h('button', { type: 'submit', class: 'primary', disabled: true }, 'Create VM');

  const field = (label, input, hint) => h('label', { class: 'field' }, h('span', null, label), input, hint ? h('small', { class: 'muted' }, hint) : null);

  const form = h('form', {
    class: 'card create-vm',
    onSubmit: async (e) => {
      e.preventDefault();
      const input = {
        name: name.value.trim(),
        memoryMib: Number(memory.value),
        vcpus: Number(vcpus.value),
        baseImage: baseImage.value || null,
        kernel: kernel.value.trim() ? { kernel: kernel.value.trim(), initrd: initrd.value.trim(), cmdline: cmdline.value } : null,
        start: start.checked,
      };
      if (!input.baseImage && !input.kernel) {
        say('Choose a base image, or a kernel and initrd to boot.', true);
        return;
      }
      submit.disabled = true;
      say(`Creating ${input.name}…`, false);
      try {
        const { createVm } = await gql(Q.createVm, { input });
        location.hash = `#/vm/${encodeURIComponent(createVm.id)}`;
      } catch (err) {
        say(errorText(err), true);
        submit.disabled = false;
      }
    },
  },
  field('Name', name),
  h('div', { class: 'row' }, field('Memory (MiB)', memory), field('vCPUs', vcpus)),
  field('Disk: a copy-on-write overlay over a base image', baseImage, 'qcow2 files of the host\u2019s image directory'),
  h('details', null,
    h('summary', null, 'Or boot a kernel directly'),
    h('div', { class: 'row' }, field('Kernel', kernel), field('Initrd', initrd)),
    field('Command line', cmdline)),
  h('label', { class: 'check' }, start, ' Start it now'),
  h('p', { class: 'muted small' }, 'Every VM gets the InfiniService channel, qemu-ga\u2019s channel and a VNC console. You become its owner.'),
  h('div', null, submit));

  gql(Q.hypervisor).then(({ hypervisor }) => {
    const images = hypervisor.baseImages ?? [];
    replace(baseImage, h('option', { value: '' }, images.length ? '— choose —' : '— no base images —'), images.map((i) => h('option', { value: i }, i)));
    if (hypervisor.state === 'connected') {
      replace(status, `libvirt connected (${hypervisor.uri}).`);
      submit.disabled = false;
    } else {
      status.className = 'error';
      replace(status, hypervisor.state === 'disabled'
        ? 'This host runs without libvirt: VMs cannot be created here.'
        : `libvirt is ${hypervisor.state}${hypervisor.reason ? `: ${hypervisor.reason}` : ''}. VMs cannot be created until it is back.`);
    }
  }, (e) => say(`Cannot ask about libvirt: ${errorText(e)}`, true));

  return {
    el: h('main', { class: 'page' },
      h('div', { class: 'page-head' }, h('a', { href: '#/vms', class: 'back' }, '← VMs'), h('h1', null, 'New virtual machine')),
      status,
      flash,
      form),
  };
}
